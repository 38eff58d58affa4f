//! Client-server API endpoints, one file per chapter of the specification.

mod account;
mod account_data;
mod admin;
pub(crate) mod alias;
mod appservice;
mod backup;
mod capabilities;
mod context;
mod device;
mod directory;
mod filter;
mod keys;
mod legacy;
mod media;
mod membership;
mod message;
mod mutual_rooms;
mod openid;
mod presence;
mod profile;
mod push;
mod receipt;
mod redact;
mod room;
mod search;
mod session;
mod sliding_sync;
mod space;
mod state;
mod summary;
mod sync;
mod thirdparty;
mod threads;
mod threepid;
mod typing;
mod user_directory;
mod versions;
mod voip;

use std::sync::Arc;

use axum::Router;
use ruma::serde::Raw;
use serde_json::Value;

use super::RumaRouter;
use crate::{
    error::{Error, Result},
    Services,
};

/// Wraps a JSON value as a ruma `Raw<T>` without re-validating it: the HTTP layer's one
/// shared mapping helper, for responses built from events already held as JSON.
pub fn raw<T>(value: &Value) -> Result<Raw<T>> {
    let json = serde_json::value::to_raw_value(value).map_err(|e| Error::internal(e.to_string()))?;
    Ok(Raw::from_json(json))
}

pub fn routes() -> Router<Arc<Services>> {
    use ruma::api::{path_builder::PathBuilder, Metadata};
    let mut router = Router::new();
    for path in ruma::api::client::sync::sync_events::v3::Request::PATH_BUILDER.all_paths() {
        router = router.route(path, axum::routing::get(sync::sync_events_route));
    }
    for path in ruma::api::client::sync::sync_events::v5::Request::PATH_BUILDER.all_paths() {
        router = router.route(path, axum::routing::post(sliding_sync::sliding_sync_route));
    }
    for path in ruma::api::client::room::upgrade_room::v3::Request::PATH_BUILDER.all_paths() {
        router = router.route(path, axum::routing::post(room::upgrade_room));
    }
    for path in ruma::api::client::account::register::v3::Request::PATH_BUILDER.all_paths() {
        router = router.route(path, axum::routing::post(account::register));
    }
    for path in ruma::api::client::account::get_3pids::v3::Request::PATH_BUILDER.all_paths() {
        router = router.route(path, axum::routing::get(threepid::get_3pids));
    }
    for path in ruma::api::client::keys::get_keys::v3::Request::PATH_BUILDER.all_paths() {
        router = router.route(path, axum::routing::post(keys::get_keys));
    }
    for path in ruma::api::client::device::get_devices::v3::Request::PATH_BUILDER.all_paths() {
        router = router.route(path, axum::routing::get(device::get_devices));
    }
    for path in ruma::api::client::device::get_device::v3::Request::PATH_BUILDER.all_paths() {
        router = router.route(path, axum::routing::get(device::get_device));
    }
    router
        .merge(admin::routes())
        .merge(threads::routes())
        .merge(space::routes())
        .merge(message::routes())
        .merge(user_directory::routes())
        .merge(threepid::routes())
        .merge(appservice::routes())
        .merge(session::routes())
        .merge(search::routes())
        .merge(redact::routes())
        .merge(summary::routes())
        .merge(mutual_rooms::routes())
        .merge(thirdparty::routes())
        .merge(voip::routes())
        .merge(media::routes())
        .merge(legacy::routes())
        .merge(capabilities::routes())
        .merge(push::routes())
        .merge(membership::routes())
        .merge(typing::routes())
        .ruma(versions::get_supported_versions)
        .ruma(account::get_username_availability)
        .ruma(account::check_registration_token_validity)
        .ruma(account::whoami)
        .ruma(account::change_password)
        .ruma(account::deactivate)
        .ruma(session::get_login_types)
        .ruma(session::login)
        .ruma(session::logout)
        .ruma(session::logout_all)
        .ruma(device::update_device)
        .ruma(device::delete_device)
        .ruma(device::delete_devices)
        .ruma(profile::get_profile)
        .ruma(openid::request_openid_token)
        .ruma(profile::get_display_name)
        .ruma(profile::set_display_name)
        .ruma(profile::get_avatar_url)
        .ruma(profile::set_avatar_url)
        .ruma(room::create_room)
        .ruma(room::get_room_event)
        .ruma(presence::set_presence)
        .ruma(presence::get_presence)
        .ruma(keys::upload_keys)
        .ruma(keys::claim_keys)
        .ruma(keys::get_key_changes)
        .ruma(keys::upload_signing_keys)
        .ruma(keys::upload_signatures)
        .ruma(keys::send_event_to_device)
        .ruma(backup::create_backup_version)
        .ruma(backup::get_latest_backup_info)
        .ruma(backup::get_backup_info)
        .ruma(backup::update_backup_version)
        .ruma(backup::delete_backup_version)
        .ruma(backup::add_backup_keys)
        .ruma(backup::add_backup_keys_for_room)
        .ruma(backup::add_backup_keys_for_session)
        .ruma(backup::get_backup_keys)
        .ruma(backup::get_backup_keys_for_room)
        .ruma(backup::get_backup_keys_for_session)
        .ruma(backup::delete_backup_keys)
        .ruma(backup::delete_backup_keys_for_room)
        .ruma(backup::delete_backup_keys_for_session)
        .ruma(message::send_message_event)
        .ruma(message::get_message_events)
        .ruma(state::get_state_events)
        .ruma(state::get_state_event_for_key)
        .ruma(state::send_state_event)
        .ruma(membership::join_room_by_id)
        .ruma(membership::join_room_by_id_or_alias)
        .ruma(membership::invite_user)
        .ruma(membership::leave_room)
        .ruma(membership::kick_user)
        .ruma(membership::ban_user)
        .ruma(membership::unban_user)
        .ruma(membership::forget_room)
        .ruma(membership::joined_rooms)
        .ruma(membership::get_member_events)
        .ruma(alias::get_alias)
        .ruma(alias::create_alias)
        .ruma(alias::delete_alias)
        .ruma(alias::get_room_aliases)
        .ruma(filter::create_filter)
        .ruma(filter::get_filter)
        .ruma(redact::redact_event)
        .ruma(directory::get_public_rooms)
        .ruma(directory::get_public_rooms_filtered)
        .ruma(directory::get_room_visibility)
        .ruma(directory::set_room_visibility)
        .ruma(context::get_context)
        .ruma(context::get_relating_events)
        .ruma(context::get_relating_events_with_rel_type)
        .ruma(context::get_relating_events_with_rel_type_and_event_type)
        .ruma(user_directory::search_users)
        .ruma(user_directory::report_content)
        .ruma(membership::knock_room)
        .ruma(receipt::create_receipt)
        .ruma(receipt::set_read_marker)
        .ruma(account_data::set_global_account_data)
        .ruma(account_data::get_global_account_data)
        .ruma(account_data::set_room_account_data)
        .ruma(account_data::get_room_account_data)
        .ruma(account_data::get_tags)
        .ruma(account_data::create_tag)
        .ruma(account_data::delete_tag)
}
