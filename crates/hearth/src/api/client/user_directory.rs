//! Client-server API: user directory search and reports (of an event, a room or a user).
//!
//! The directory shows local users who share a room with the searcher or sit in a
//! published room — not everyone on the server (Synapse's default too).

use std::sync::Arc;

use ruma::api::client::{room::report_content, user_directory::search_users};

use crate::{
    api::Ruma,
    error::{Error, Result},
    users::user_directory::MAX_RESULTS,
    Services,
};

/// `POST /_matrix/client/v3/user_directory/search`
pub async fn search_users(
    s: Arc<Services>,
    req: Ruma<search_users::v3::Request>,
) -> Result<search_users::v3::Response> {
    let caller = req.caller()?;
    let limit = (u64::from(req.body.limit) as usize).clamp(1, MAX_RESULTS);
    let candidates = s.rooms.user_directory_candidates(&caller.user_id)?;
    let remote = |user: &ruma::UserId| s.rooms.remote_profile(user);
    let (found, limited) = s.users.search_user_directory(candidates, &req.body.search_term, limit, &remote)?;
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

/// The reason of a report body (`{}` and a missing body mean none).
fn report_reason(body: &[u8]) -> Result<Option<String>> {
    if body.is_empty() {
        return Ok(None);
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| Error::not_json("Content not JSON."))?;
    match value.get("reason") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(r)) => Ok(Some(r.clone())),
        Some(_) => Err(Error::bad_json("reason must be a string")),
    }
}

/// `POST /_matrix/client/v3/rooms/{roomId}/report`: a report of a whole room.
async fn report_room(
    axum::extract::State(s): axum::extract::State<Arc<Services>>,
    axum::extract::Path(room): axum::extract::Path<String>,
    parts: http::request::Parts,
    body: axum::body::Bytes,
) -> Result<axum::Json<serde_json::Value>> {
    let caller = crate::api::caller_of(&s, &parts)?;
    let room = ruma::OwnedRoomId::try_from(room).map_err(|_| Error::invalid_param("Invalid room id"))?;
    s.rooms.report_room(&caller.user_id, &room, report_reason(&body)?)?;
    Ok(axum::Json(serde_json::json!({})))
}

/// `POST /_matrix/client/v3/users/{userId}/report`: a report of a user.
async fn report_user(
    axum::extract::State(s): axum::extract::State<Arc<Services>>,
    axum::extract::Path(user): axum::extract::Path<String>,
    parts: http::request::Parts,
    body: axum::body::Bytes,
) -> Result<axum::Json<serde_json::Value>> {
    let caller = crate::api::caller_of(&s, &parts)?;
    let user = ruma::OwnedUserId::try_from(user).map_err(|_| Error::invalid_param("Invalid user id"))?;
    s.rooms.report_user(&caller.user_id, &user, report_reason(&body)?)?;
    Ok(axum::Json(serde_json::json!({})))
}

/// The report endpoints written as plain routes.
pub fn routes() -> axum::Router<Arc<Services>> {
    axum::Router::new()
        .route("/_matrix/client/v3/rooms/{room_id}/report", axum::routing::post(report_room))
        .route("/_matrix/client/v3/users/{user_id}/report", axum::routing::post(report_user))
}
