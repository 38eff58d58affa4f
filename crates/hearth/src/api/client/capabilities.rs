//! Client-server API: capabilities negotiation (`GET /capabilities`).

use std::{collections::BTreeMap, sync::Arc};

#[allow(deprecated)]
use ruma::api::client::discovery::get_capabilities::v3::{
    self as get_capabilities, Capabilities, ChangePasswordCapability, RoomVersionStability, RoomVersionsCapability,
    SetAvatarUrlCapability, SetDisplayNameCapability, ThirdPartyIdChangesCapability,
};

use crate::{api::Ruma, error::Result, Services};

/// `GET /_matrix/client/v3/capabilities`
///
/// `m.set_displayname` / `m.set_avatar_url` are deprecated in favour of `m.profile_fields`
/// but Element and Nheko still read them.
#[allow(deprecated)]
pub async fn get_capabilities(
    s: Arc<Services>,
    _req: Ruma<get_capabilities::Request>,
) -> Result<get_capabilities::Response> {
    let available: BTreeMap<_, _> = s.room_versions().into_iter().map(|v| (v, RoomVersionStability::Stable)).collect();
    let mut caps = Capabilities::new();
    caps.change_password = ChangePasswordCapability::new(true);
    caps.room_versions = RoomVersionsCapability::new(s.config.default_room_version.clone(), available);
    caps.set_displayname = SetDisplayNameCapability::new(true);
    caps.set_avatar_url = SetAvatarUrlCapability::new(true);
    caps.thirdparty_id_changes = ThirdPartyIdChangesCapability::new(false);
    Ok(get_capabilities::Response::new(caps))
}
