//! The user directory search (`/user_directory/search`): matching local users by user id
//! or display name.
//!
//! Which users a searcher may find at all (those sharing a room with them or sitting in a
//! published room: Synapse's default, not everyone on the server) is a question about
//! rooms, answered by `Rooms::user_directory_candidates`; this module only matches and
//! describes. Deactivated users are never listed; remote users are described as a room
//! this server shares with them shows them.

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

/// A remote user's (display name, avatar URL), as a shared room shows them; `None` when
/// no room does.
pub type RemoteProfile<'a> = &'a dyn Fn(&ruma::UserId) -> Result<Option<(Option<String>, Option<String>)>>;

impl Users {
    /// The users among `candidates` whose user id or display name contains `term` (any
    /// case), in the candidates' order; at most `limit`, and whether more would have
    /// matched. Local users are described by their profile and listed while active;
    /// remote users by `remote` (their member event in a shared room).
    pub fn search_user_directory(
        &self,
        candidates: impl IntoIterator<Item = OwnedUserId>,
        term: &str,
        limit: usize,
        remote: RemoteProfile<'_>,
    ) -> Result<(Vec<DirectoryEntry>, bool)> {
        let term = term.to_lowercase();
        let mut results = Vec::new();
        for user in candidates {
            let (name, avatar) = if user.server_name() == self.server_name() {
                if !self.is_active(&user)? {
                    continue;
                }
                let field = |k: &str| -> Result<Option<String>> {
                    Ok(self.profile_field(&user, k)?.and_then(|v| v.as_str().map(str::to_owned)))
                };
                (field("displayname")?, None)
            } else {
                match remote(&user)? {
                    Some(profile) => profile,
                    None => continue,
                }
            };
            let hit = user.as_str().to_lowercase().contains(&term)
                || name.as_deref().is_some_and(|n| n.to_lowercase().contains(&term));
            if !hit {
                continue;
            }
            if results.len() == limit {
                return Ok((results, true));
            }
            let avatar = match avatar {
                Some(a) => Some(a),
                None if user.server_name() == self.server_name() => {
                    self.profile_field(&user, "avatar_url")?.and_then(|v| v.as_str().map(str::to_owned))
                }
                None => None,
            };
            results.push(DirectoryEntry { user_id: user, display_name: name, avatar_url: avatar.map(Into::into) });
        }
        Ok((results, false))
    }
}
