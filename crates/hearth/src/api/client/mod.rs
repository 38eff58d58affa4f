//! Client-server API endpoints, one file per chapter of the specification.

mod account;
mod capabilities;
mod device;
mod profile;
mod session;
mod versions;

use std::sync::Arc;

use axum::Router;

use super::RumaRouter;
use crate::Services;

pub fn routes() -> Router<Arc<Services>> {
    Router::new()
        .ruma(versions::get_supported_versions)
        .ruma(capabilities::get_capabilities)
        .ruma(account::register)
        .ruma(account::get_username_availability)
        .ruma(account::check_registration_token_validity)
        .ruma(account::whoami)
        .ruma(account::change_password)
        .ruma(account::deactivate)
        .ruma(session::get_login_types)
        .ruma(session::login)
        .ruma(session::logout)
        .ruma(session::logout_all)
        .ruma(device::get_devices)
        .ruma(device::get_device)
        .ruma(device::update_device)
        .ruma(device::delete_device)
        .ruma(device::delete_devices)
        .ruma(profile::get_profile)
        .ruma(profile::get_display_name)
        .ruma(profile::set_display_name)
        .ruma(profile::get_avatar_url)
        .ruma(profile::set_avatar_url)
}
