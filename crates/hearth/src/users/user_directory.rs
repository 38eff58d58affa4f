//! The user directory search (`/user_directory/search`): matching local users by user id
//! or display name.
//!
//! Which users a searcher may find at all (those sharing a room with them or sitting in a
//! published room: Synapse's default, not everyone on the server) is a question about
//! rooms, answered by `Rooms::user_directory_candidates`; this module only matches and
//! describes. Remote and deactivated users are never listed.

use ruma::{OwnedMxcUri, OwnedUserId};

use super::Users;
use crate::error::Result;

/// Most results per search.
pub const MAX_RESULTS: usize = 50;

/// A user found by a search, with their profile.
pub struct DirectoryEntry {
    pub user_id: OwnedUserId,
    pub display_name: Option<String>,
    pub avatar_url: Option<OwnedMxcUri>,
}

impl Users {
    /// The active local users among `candidates` whose user id or display name contains
    /// `term` (any case), in the candidates' order; at most `limit`, and whether more
    /// would have matched.
    pub fn search_user_directory(
        &self,
        candidates: impl IntoIterator<Item = OwnedUserId>,
        term: &str,
        limit: usize,
    ) -> Result<(Vec<DirectoryEntry>, bool)> {
        let term = term.to_lowercase();
        let mut results = Vec::new();
        for user in candidates {
            if user.server_name() != self.server_name() || !self.is_active(&user)? {
                continue;
            }
            let name = self.profile_field(&user, "displayname")?.and_then(|v| v.as_str().map(str::to_owned));
            let hit = user.as_str().to_lowercase().contains(&term)
                || name.as_deref().is_some_and(|n| n.to_lowercase().contains(&term));
            if !hit {
                continue;
            }
            if results.len() == limit {
                return Ok((results, true));
            }
            let avatar_url = self.profile_field(&user, "avatar_url")?.and_then(|v| v.as_str().map(Into::into));
            results.push(DirectoryEntry { user_id: user, display_name: name, avatar_url });
        }
        Ok((results, false))
    }
}
