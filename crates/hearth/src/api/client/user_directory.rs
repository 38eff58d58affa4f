//! Client-server API: user directory search and content reports.
//!
//! The directory shows local users who share a room with the searcher or sit in a
//! published room — not everyone on the server (Synapse's default too).

use std::sync::Arc;

use ruma::api::client::{room::report_content, user_directory::search_users};

use crate::{api::Ruma, error::Result, users::user_directory::MAX_RESULTS, Services};

/// `POST /_matrix/client/v3/user_directory/search`
pub async fn search_users(
    s: Arc<Services>,
    req: Ruma<search_users::v3::Request>,
) -> Result<search_users::v3::Response> {
    let caller = req.caller()?;
    let limit = (u64::from(req.body.limit) as usize).clamp(1, MAX_RESULTS);
    let candidates = s.rooms.user_directory_candidates(&caller.user_id)?;
    let (found, limited) = s.users.search_user_directory(candidates, &req.body.search_term, limit)?;
    let results = found
        .into_iter()
        .map(|entry| {
            let mut u = search_users::v3::User::new(entry.user_id);
            u.display_name = entry.display_name;
            u.avatar_url = entry.avatar_url;
            u
        })
        .collect();
    Ok(search_users::v3::Response::new(results, limited))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/report/{eventId}`
///
/// Kept for the server admins and logged; the reporter learns nothing more.
pub async fn report_content(
    s: Arc<Services>,
    req: Ruma<report_content::v3::Request>,
) -> Result<report_content::v3::Response> {
    let caller = req.caller()?;
    let b = &req.body;
    s.rooms.report_event(&caller.user_id, &b.room_id, &b.event_id, b.reason.clone())?;
    Ok(report_content::v3::Response::new())
}
