//! The server-server API: one file per chapter of the spec, as thin as the client
//! handlers. The request extractor ([`super::Ruma`]) verifies `X-Matrix` on every endpoint
//! whose ruma metadata asks for server signatures and hands the handler the origin. When
//! `allow_federation` is off, none of these routes exist (404 `M_UNRECOGNIZED`), as on
//! Conduit; the key endpoints (`api/key.rs`) stay, since they only publish public keys.

pub mod directory;
pub mod events;
pub mod keys;
pub mod media;
pub mod membership;
pub mod openid;
pub mod query;
mod space;
pub mod thirdparty;
pub mod transactions;
pub mod version;

use std::sync::Arc;

use axum::Router;

use super::RumaRouter;
use crate::Services;

pub fn routes(allow_federation: bool) -> Router<Arc<Services>> {
    if !allow_federation {
        return Router::new();
    }
    Router::new()
        .merge(media::routes())
        .route("/_matrix/federation/v1/hierarchy/{room_id}", axum::routing::get(space::get_hierarchy))
        .ruma(version::get_server_version)
        .ruma(query::get_profile_information)
        .ruma(query::get_room_information)
        .ruma(directory::get_public_rooms)
        .ruma(directory::get_public_rooms_filtered)
        .route("/_matrix/federation/v1/openid/userinfo", axum::routing::get(openid::get_openid_userinfo))
        .ruma(events::get_event)
        .ruma(events::get_room_state)
        .ruma(events::get_room_state_ids)
        .ruma(events::get_event_authorization)
        .route("/_matrix/federation/v1/get_missing_events/{room_id}", axum::routing::post(events::get_missing_events))
        .ruma(events::get_backfill)
        .ruma(membership::make_join)
        .ruma(membership::send_join)
        .route("/_matrix/federation/v1/send_join/{room_id}/{event_id}", axum::routing::put(membership::send_join_v1))
        .ruma(membership::make_leave)
        .ruma(membership::send_leave)
        .route("/_matrix/federation/v1/send_leave/{room_id}/{event_id}", axum::routing::put(membership::send_leave_v1))
        .ruma(membership::create_invite)
        .route("/_matrix/federation/v1/invite/{room_id}/{event_id}", axum::routing::put(membership::create_invite_v1))
        .ruma(membership::make_knock)
        .ruma(membership::send_knock)
        .ruma(keys::get_keys)
        .ruma(keys::claim_keys)
        .ruma(keys::get_devices)
        .ruma(transactions::send_transaction_message)
        .ruma(thirdparty::exchange_third_party_invite)
        .route("/_matrix/federation/v1/3pid/onbind", axum::routing::post(thirdparty::on_bind))
}
