//! Client-server API: `GET /_matrix/client/versions`.

use std::{collections::BTreeMap, sync::Arc};

use ruma::api::client::discovery::get_supported_versions;

use crate::{api::Ruma, error::Result, Services};

/// The spec versions whose client-server endpoints Hearth serves, as `v3` paths.
pub const SUPPORTED_VERSIONS: &[&str] =
    &["v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11", "v1.12"];

/// `GET /_matrix/client/versions`
///
/// The spec versions this server speaks, and the unstable features it really serves:
/// MSC2666's mutual rooms (Element asks for them only when this says so), and simplified
/// sliding sync (MSC4186; Element X refuses a server without it), tested with Element X's
/// own engine (`tests/element-x`).
pub async fn get_supported_versions(
    _s: Arc<Services>,
    _req: Ruma<get_supported_versions::Request>,
) -> Result<get_supported_versions::Response> {
    let mut res = get_supported_versions::Response::new(SUPPORTED_VERSIONS.iter().map(|v| (*v).to_owned()).collect());
    res.unstable_features = BTreeMap::from([
        ("uk.half-shot.msc2666.query_mutual_rooms".to_owned(), true),
        ("org.matrix.simplified_msc3575".to_owned(), true),
    ]);
    Ok(res)
}
