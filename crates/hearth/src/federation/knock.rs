//! Knocking across servers (room versions 7 and later, rooms whose join rule is `knock`).
//!
//! - **Served**: `make_knock` hands out the knock's template; `send_knock` checks and
//!   appends it as any received event, sends it on to the room's other servers, and
//!   answers with the room's stripped state (as full PDUs, Matrix 1.16).
//! - **Asked**: a local user knocks on a room elsewhere through `via` (or the room id's
//!   server): the template is completed and signed here, sent, and the knock is kept with
//!   the state that came back, so `/sync` shows it under `knock`. Being let in is an
//!   invite, which arrives as any invite.

use std::time::Duration;

use http::StatusCode;
use ruma::{events::room::member::MembershipState, OwnedServerName, RoomId, RoomVersionId, ServerName, UserId};
use serde::Deserialize;
use serde_json::{value::RawValue as RawJsonValue, Map, Value};

use super::{
    join::{federated_versions, with_reason},
    pdu::{own_json, stripped},
    receive::encode,
    Federation,
};
use crate::{
    error::{Error, Result},
    rooms::{append::NewEvent, pdu::Pdu, PREVIEW_STATE_TYPES},
    transport::server_client::ServerRequest,
};

const KNOCK_TIMEOUT: Duration = Duration::from_secs(30);
/// Most servers tried for one knock, and most stripped state events kept with it.
const MAX_CANDIDATES: usize = 10;
const MAX_KNOCK_STATE: usize = 64;

fn incompatible(version: &RoomVersionId) -> Error {
    Error::matrix(
        StatusCode::BAD_REQUEST,
        "M_INCOMPATIBLE_ROOM_VERSION",
        format!("Room version {version} does not allow knocking, or your server does not support it"),
    )
    .with_field("room_version", Value::String(version.to_string()))
}

/// Whether a room version has knocking.
fn knocks(version: &RoomVersionId) -> bool {
    version.rules().is_some_and(|r| r.authorization.knocking)
}

impl Federation {
    /// `GET /make_knock`: the template of `user`'s knock.
    pub fn make_knock(
        &self,
        origin: &ServerName,
        room: &RoomId,
        user: &UserId,
        supported: &[RoomVersionId],
    ) -> Result<(RoomVersionId, ruma::CanonicalJsonObject)> {
        if user.server_name() != origin {
            return Err(Error::forbidden("The user is not of the requesting server"));
        }
        self.require_acl(room, origin)?;
        self.rooms.check_not_blocked(room)?;
        let version = self.rooms.known_room(room)?.version;
        if !knocks(&version) || !supported.contains(&version) || !super::super::rooms::resolve::federates(&version) {
            return Err(incompatible(&version));
        }
        let new = NewEvent::state("m.room.member", user.as_str(), serde_json::json!({"membership": "knock"}));
        Ok((version, self.rooms.template(room, user, new)?))
    }

    /// `PUT /send_knock`: appends the knock and answers with the room's stripped state.
    pub async fn send_knock(
        &self,
        origin: &ServerName,
        room: &RoomId,
        event_id: &ruma::EventId,
        raw: &RawJsonValue,
    ) -> Result<Vec<Box<RawJsonValue>>> {
        self.receive_membership(origin, room, event_id, raw, MembershipState::Knock).await?;
        self.room_preview(room)
    }

    /// The room's state a knocking (or invited) user's client needs, as full PDUs.
    pub(crate) fn room_preview(&self, room: &RoomId) -> Result<Vec<Box<RawJsonValue>>> {
        let map = self.rooms.current_state_map(room)?;
        let mut out = Vec::new();
        for pdu in self.rooms.state_events(&map)? {
            if PREVIEW_STATE_TYPES.contains(&pdu.kind.to_string().as_str()) {
                out.push(own_json(&pdu));
            }
        }
        Ok(out)
    }

    /// A local user knocks on a room here (when a local user is in it) or elsewhere.
    pub async fn knock(
        &self,
        room: &RoomId,
        user: &UserId,
        via: &[OwnedServerName],
        profile: Map<String, Value>,
        reason: Option<String>,
        federate: bool,
    ) -> Result<()> {
        self.rooms.check_not_blocked(room)?;
        if self.is_resident(room)? || !federate {
            self.rooms.knock(room, user, profile, reason)?;
            return Ok(());
        }
        let content = with_reason(profile, reason);
        let candidates = self.candidates(room, via, MAX_CANDIDATES)?;
        self.through(&candidates, room, "knock", |server| self.knock_through(server, room, user, &content)).await
    }

    async fn knock_through(
        &self,
        server: &ServerName,
        room: &RoomId,
        user: &UserId,
        content: &Map<String, Value>,
    ) -> Result<()> {
        let mut path =
            format!("/_matrix/federation/v1/make_knock/{}/{}?", encode(room.as_str()), encode(user.as_str()));
        path.push_str(&federated_versions().iter().map(|v| format!("ver={v}")).collect::<Vec<_>>().join("&"));
        #[derive(Deserialize)]
        struct Made {
            room_version: RoomVersionId,
            event: Box<RawJsonValue>,
        }
        let made: Made = serde_json::from_slice(
            &self.ask(server, ServerRequest::get(&path).limits(KNOCK_TIMEOUT, 1024 * 1024)).await?,
        )
        .map_err(|e| Error::unavailable(format!("{server} sent an invalid make_knock answer: {e}")))?;
        if !knocks(&made.room_version) || !super::super::rooms::resolve::federates(&made.room_version) {
            return Err(incompatible(&made.room_version));
        }
        let rules = made.room_version.rules().ok_or_else(|| Error::internal("rules of a known version"))?;
        let (event, event_id) = self.complete_template(&made.event, room, user, content, &rules, "knock")?;
        let path = format!("/_matrix/federation/v1/send_knock/{}/{}", encode(room.as_str()), encode(event_id.as_str()));
        let body = serde_json::to_value(&event).map_err(|e| Error::internal(e.to_string()))?;
        let req = ServerRequest { method: http::Method::PUT, ..ServerRequest::post(&path, &body) }
            .limits(KNOCK_TIMEOUT, 4 * 1024 * 1024);
        #[derive(Deserialize)]
        struct Sent {
            #[serde(default)]
            knock_room_state: Vec<Box<RawJsonValue>>,
        }
        let sent: Sent = serde_json::from_slice(&self.ask(server, req).await?)
            .map_err(|e| Error::unavailable(format!("{server} sent an invalid send_knock answer: {e}")))?;
        let knock = Pdu::from_json(event_id, event, Some(room))?;
        self.rooms.append_remote_knock(knock, stripped(&sent.knock_room_state, MAX_KNOCK_STATE))
    }
}
