//! Server-server API: the public room directory (`/_matrix/federation/v1/publicRooms`),
//! the same listing local clients get.

use std::sync::Arc;

use ruma::api::federation::directory::{get_public_rooms, get_public_rooms_filtered};

use crate::{api::Ruma, error::Result, Services};

/// `GET /_matrix/federation/v1/publicRooms`
pub async fn get_public_rooms(
    s: Arc<Services>,
    req: Ruma<get_public_rooms::v1::Request>,
) -> Result<get_public_rooms::v1::Response> {
    let _origin = req.origin()?;
    let page = s.rooms.public_rooms(None, req.body.since.as_deref(), req.body.limit)?;
    let mut res = get_public_rooms::v1::Response::new();
    res.chunk = page.chunk;
    res.next_batch = page.next;
    res.prev_batch = page.prev;
    res.total_room_count_estimate = ruma::UInt::new(page.total);
    Ok(res)
}

/// `POST /_matrix/federation/v1/publicRooms`
pub async fn get_public_rooms_filtered(
    s: Arc<Services>,
    req: Ruma<get_public_rooms_filtered::v1::Request>,
) -> Result<get_public_rooms_filtered::v1::Response> {
    let _origin = req.origin()?;
    let term = req.body.filter.generic_search_term.as_deref();
    let page = s.rooms.public_rooms(term, req.body.since.as_deref(), req.body.limit)?;
    let mut res = get_public_rooms_filtered::v1::Response::new();
    res.chunk = page.chunk;
    res.next_batch = page.next;
    res.prev_batch = page.prev;
    res.total_room_count_estimate = ruma::UInt::new(page.total);
    Ok(res)
}
