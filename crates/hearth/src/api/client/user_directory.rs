//! Client-server API: user directory search and content reports.
//!
//! The directory shows local users who share a room with the searcher or sit in a
//! published room — not everyone on the server (Synapse's default too).

use std::{collections::BTreeSet, sync::Arc};

use ruma::{
    api::client::{room::report_content, user_directory::search_users},
    OwnedUserId,
};
use serde::{Deserialize, Serialize};

use crate::{
    api::Ruma,
    error::{Error, Result},
    json_value,
    rooms::PUBLISHED_ROOMS,
    store::{tables, Table},
    Services,
};

/// Most results per search.
pub const MAX_RESULTS: usize = 50;

/// `POST /_matrix/client/v3/user_directory/search`
pub async fn search_users(
    s: Arc<Services>,
    req: Ruma<search_users::v3::Request>,
) -> Result<search_users::v3::Response> {
    let caller = req.caller()?;
    let term = req.body.search_term.to_lowercase();
    let limit = (u64::from(req.body.limit) as usize).clamp(1, MAX_RESULTS);
    let mut visible: BTreeSet<OwnedUserId> = BTreeSet::new();
    for room in s.rooms.joined_rooms(&caller.user_id)? {
        visible.extend(s.rooms.members(&room, "join")?);
    }
    let mut published = Vec::new();
    PUBLISHED_ROOMS.scan_all(&s.store, |room, ()| {
        published.push(room);
        true
    })?;
    for room in published {
        if let Ok(room) = ruma::OwnedRoomId::try_from(room) {
            visible.extend(s.rooms.members(&room, "join")?);
        }
    }
    let mut results = Vec::new();
    let mut limited = false;
    for user in visible {
        if user.server_name() != s.config.server_name || !s.users.is_active(&user)? {
            continue;
        }
        let name = s.users.profile_field(&user, "displayname")?.and_then(|v| v.as_str().map(str::to_owned));
        let hit = user.as_str().to_lowercase().contains(&term)
            || name.as_deref().is_some_and(|n| n.to_lowercase().contains(&term));
        if !hit {
            continue;
        }
        if results.len() == limit {
            limited = true;
            break;
        }
        let mut u = search_users::v3::User::new(user.clone());
        u.display_name = name;
        u.avatar_url = s.users.profile_field(&user, "avatar_url")?.and_then(|v| v.as_str().map(Into::into));
        results.push(u);
    }
    Ok(search_users::v3::Response::new(results, limited))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub reporter: OwnedUserId,
    pub event_id: String,
    pub reason: Option<String>,
    pub ts: u64,
}

json_value!(Report);

pub const REPORTS: Table<(String, u64), Report> = Table::new(tables::REPORTS);

/// `POST /_matrix/client/v3/rooms/{roomId}/report/{eventId}`
///
/// Kept for the server admins and logged; the reporter learns nothing more.
pub async fn report_content(
    s: Arc<Services>,
    req: Ruma<report_content::v3::Request>,
) -> Result<report_content::v3::Response> {
    let caller = req.caller()?;
    let b = &req.body;
    let until = s.rooms.require_visible(&b.room_id, &caller.user_id)?;
    s.rooms
        .event_meta(&b.event_id)?
        .filter(|m| m.room_id == b.room_id && m.stream <= until)
        .ok_or_else(|| Error::not_found("Event not found"))?;
    if b.reason.as_ref().is_some_and(|r| r.len() > 2000) {
        return Err(Error::too_large("Reason too long"));
    }
    let ts = crate::time::now_millis();
    let mut batch = crate::store::Batch::new();
    REPORTS.put(
        &mut batch,
        (b.room_id.as_str(), ts),
        &Report { reporter: caller.user_id.clone(), event_id: b.event_id.to_string(), reason: b.reason.clone(), ts },
    );
    s.store.write(batch)?;
    tracing::warn!(room = %b.room_id, event = %b.event_id, reporter = %caller.user_id, reason = ?b.reason, "content reported");
    Ok(report_content::v3::Response::new())
}
