//! Third-party invites: inviting someone by e-mail address (the client-server API's
//! "Third-party invites", the server-server API's "Third-party invites").
//!
//! 1. **Invite** (`POST /rooms/{id}/invite` with `medium`/`address`, or `invite_3pid` in
//!    `createRoom`): the identity server is asked whom the address is bound to; a bound
//!    address is an ordinary invite of that user. An unbound one is stored there
//!    (`store-invite`), and the room gets an `m.room.third_party_invite` state event keyed
//!    by the identity server's token, carrying its public keys.
//! 2. **Redemption**: once the address's owner binds it, the identity server calls their
//!    homeserver back (`/3pid/onbind`) with the invite signed with one of those keys. That
//!    homeserver turns it into the invite's member event (`third_party_invite` in its
//!    content), sender the original inviter: built here when the inviter is a local user,
//!    asked of the inviter's server otherwise (`exchange_third_party_invite`). A user
//!    holding the signed object may also `/join` with it (`third_party_signed`).
//! 3. **Checks** before the member event is built: the signature verifies with one of the
//!    public keys of the room's `m.room.third_party_invite` event for the token, and the
//!    identity server still vouches for that key (its `key_validity_url`); the room
//!    version's auth rules check the signature again.

use std::time::Duration;

use base64::Engine;
use ruma::{
    canonical_json::CanonicalJsonObject, events::StateEventType, serde::Base64, OwnedUserId, RoomId,
    SigningKeyAlgorithm, UserId,
};
use serde_json::{json, Value};

use super::{client, Identity};
use crate::{
    error::{Error, Result},
    transport::server_client::ServerRequest,
};

/// Most invites one `onbind` call may carry.
const MAX_INVITES: usize = 64;
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the client's invite names: an address at an identity server.
pub struct ThirdPartyInvitee<'a> {
    pub id_server: &'a str,
    pub id_access_token: &'a str,
    pub medium: &'a str,
    pub address: &'a str,
}

impl Identity {
    /// Step 1 (see the module doc): `sender` invites the owner of an address to `room`.
    pub async fn invite(
        &self,
        room: &RoomId,
        sender: &UserId,
        to: ThirdPartyInvitee<'_>,
        federate: bool,
    ) -> Result<()> {
        let id_server = client::server_name(to.id_server)?;
        self.rooms.known_room(room)?;
        if !self.rooms.is_joined(room, sender)? {
            return Err(Error::forbidden("You are not in this room"));
        }
        let address = super::canonical(to.medium, to.address);
        if let Some(user) = self.client.lookup(id_server, to.id_access_token, to.medium, &address).await? {
            return self.federation.invite(room, sender, &user, None, false, federate).await;
        }
        let state = |kind: StateEventType, field: &str| self.rooms.state_str(room, kind, field);
        let profile = |field: &str| -> Result<Option<String>> {
            Ok(self.users().profile_field(sender, field)?.and_then(|v| v.as_str().map(str::to_owned)))
        };
        let mut body = json!({
            "medium": to.medium,
            "address": address,
            "room_id": room,
            "sender": sender,
        });
        let optional = [
            ("room_alias", state(StateEventType::RoomCanonicalAlias, "alias")?),
            ("room_avatar_url", state(StateEventType::RoomAvatar, "url")?),
            ("room_join_rules", state(StateEventType::RoomJoinRules, "join_rule")?),
            ("room_name", state(StateEventType::RoomName, "name")?),
            ("room_type", state(StateEventType::RoomCreate, "type")?),
            ("sender_display_name", profile("displayname")?),
            ("sender_avatar_url", profile("avatar_url")?),
        ];
        for (key, value) in optional {
            if let Some(v) = value {
                body[key] = json!(v);
            }
        }
        let stored = self.client.store_invite(id_server, to.id_access_token, &body).await?;
        if stored.token.is_empty() || stored.token.len() > 255 {
            return Err(Error::unavailable(format!("The identity server {id_server} gave an unusable invite token")));
        }
        self.rooms.append_local(
            room,
            sender,
            crate::rooms::append::NewEvent::state(
                "m.room.third_party_invite",
                stored.token.clone(),
                stored.event_content(),
            ),
            None,
        )?;
        Ok(())
    }

    /// `POST /_matrix/federation/v1/3pid/onbind`: an identity server says an address was
    /// bound to a local user and hands over the invites stored for it. Each is redeemed
    /// (step 2); when one fails the others are still tried, and the answer is the first
    /// failure (as Synapse's), so that the identity server knows.
    pub async fn on_bind(&self, body: &Value) -> Result<()> {
        let mxid = body.get("mxid").and_then(Value::as_str).ok_or_else(|| Error::missing_param("mxid"))?;
        let mxid = <&UserId>::try_from(mxid).map_err(|_| Error::invalid_param("mxid is not a user id"))?;
        if !self.is_local(mxid) {
            return Err(Error::invalid_param("That user is not on this server"));
        }
        let invites = body.get("invites").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        let mut first_error = None;
        for invite in invites.iter().take(MAX_INVITES) {
            let room = invite.get("room_id").and_then(Value::as_str).and_then(|r| <&RoomId>::try_from(r).ok());
            let sender = invite.get("sender").and_then(Value::as_str).and_then(|s| <&UserId>::try_from(s).ok());
            let (Some(room), Some(sender), Some(signed)) = (room, sender, invite.get("signed")) else {
                tracing::info!(%mxid, "an identity server's invite lacks its room, sender or signature");
                continue;
            };
            if signed.get("mxid").and_then(Value::as_str) != Some(mxid.as_str()) {
                tracing::info!(%mxid, %room, "an identity server's invite is signed for someone else");
                continue;
            }
            if let Err(e) = self.redeem(room, sender, mxid, signed).await {
                tracing::info!(%mxid, %room, %sender, error = %e, "could not redeem a third-party invite");
                first_error.get_or_insert(e);
            }
        }
        // Every invite was tried; the identity server hears of the first that failed.
        first_error.map_or(Ok(()), Err)
    }

    /// Step 2: turns a signed third-party invite into the invite of `target` to `room`,
    /// here when `sender` is a local user of a room this server is in, else through
    /// `sender`'s server.
    pub async fn redeem(&self, room: &RoomId, sender: &UserId, target: &UserId, signed: &Value) -> Result<()> {
        if self.is_local(sender) {
            return self.invite_signed(room, target, signed).await;
        }
        let content = json!({
            "membership": "invite",
            "third_party_invite": {"display_name": "", "signed": signed},
        });
        let event = json!({
            "type": "m.room.member",
            "room_id": room,
            "sender": sender,
            "state_key": target,
            "content": content,
        });
        let path = format!(
            "/_matrix/federation/v1/exchange_third_party_invite/{}",
            crate::federation::receive::encode(room.as_str())
        );
        let req = ServerRequest { method: http::Method::PUT, ..ServerRequest::post(&path, &event) }
            .limits(EXCHANGE_TIMEOUT, 64 * 1024);
        self.federation.ask(sender.server_name(), req).await.map(|_| ())
    }

    /// `PUT /_matrix/federation/v1/exchange_third_party_invite/{roomId}`: another server
    /// asks this one, the inviter's, to turn a signed third-party invite into the invite.
    pub async fn exchange(&self, room: &RoomId, event: &Value) -> Result<()> {
        let field = |k: &str| event.get(k).and_then(Value::as_str);
        if field("type") != Some("m.room.member") || field("room_id") != Some(room.as_str()) {
            return Err(Error::invalid_param("Not a member event of this room"));
        }
        let sender =
            field("sender").and_then(|s| <&UserId>::try_from(s).ok()).ok_or_else(|| Error::invalid_param("sender"))?;
        if !self.is_local(sender) {
            return Err(Error::forbidden("The inviter is not a user of this server"));
        }
        let target = field("state_key")
            .and_then(|s| <&UserId>::try_from(s).ok())
            .ok_or_else(|| Error::invalid_param("state_key"))?;
        let signed = event
            .get("content")
            .and_then(|c| c.get("third_party_invite"))
            .and_then(|t| t.get("signed"))
            .ok_or_else(|| Error::missing_param("content.third_party_invite.signed"))?;
        self.invite_signed(room, target, signed).await
    }

    /// `/join` with `third_party_signed`: the signed object names the inviter; the invite is
    /// redeemed first, then the user joins as any invited user does.
    pub async fn redeem_for_join(&self, room: &RoomId, user: &UserId, signed: &Value) -> Result<()> {
        if signed.get("mxid").and_then(Value::as_str) != Some(user.as_str()) {
            return Err(Error::forbidden("That third-party invite is signed for someone else"));
        }
        let sender = signed
            .get("sender")
            .and_then(Value::as_str)
            .and_then(|s| <&UserId>::try_from(s).ok())
            .ok_or_else(|| Error::missing_param("third_party_signed.sender"))?;
        self.redeem(room, sender, user, signed).await
    }

    /// Builds the invite member event of a room this server is in, the inviter being the
    /// sender of the room's `m.room.third_party_invite` for the token (step 3 first).
    async fn invite_signed(&self, room: &RoomId, target: &UserId, signed: &Value) -> Result<()> {
        self.rooms.known_room(room)?;
        let token = signed.get("token").and_then(Value::as_str).ok_or_else(|| Error::missing_param("signed.token"))?;
        let invite = self
            .rooms
            .state_event(room, &StateEventType::RoomThirdPartyInvite, token)?
            .ok_or_else(|| Error::forbidden("No third-party invite in this room has that token"))?;
        let content = invite.content_value();
        if content.as_object().is_none_or(|c| c.is_empty()) {
            return Err(Error::forbidden("That third-party invite was revoked"));
        }
        self.check_signed(&content, signed).await?;
        let sender: OwnedUserId = invite.sender.clone();
        let display_name = content.get("display_name").cloned().unwrap_or(json!(""));
        let member = json!({
            "membership": "invite",
            "third_party_invite": {"display_name": display_name, "signed": signed},
        });
        self.federation.invite_with(room, &sender, target, member, true).await
    }

    /// Step 3: the signature of `signed` verifies with one of the public keys of the
    /// room's `m.room.third_party_invite` `content`, and its identity server still
    /// vouches for that key.
    async fn check_signed(&self, content: &Value, signed: &Value) -> Result<()> {
        let mut keys: Vec<(String, Option<String>)> = Vec::new();
        for key in content.get("public_keys").and_then(Value::as_array).into_iter().flatten().take(8) {
            if let Some(public_key) = key.get("public_key").and_then(Value::as_str) {
                let url = key.get("key_validity_url").and_then(Value::as_str).map(str::to_owned);
                keys.push((public_key.to_owned(), url));
            }
        }
        if let Some(public_key) = content.get("public_key").and_then(Value::as_str) {
            let url = content.get("key_validity_url").and_then(Value::as_str).map(str::to_owned);
            keys.push((public_key.to_owned(), url));
        }
        let object: CanonicalJsonObject = serde_json::from_value(signed.clone())
            .map_err(|e| Error::bad_json(format!("The signed third-party invite is not canonical JSON: {e}")))?;
        let signing_input = ruma::signatures::to_canonical_json_string_for_signing(&object)
            .map_err(|e| Error::bad_json(format!("The signed third-party invite cannot be checked: {e}")))?;
        let signatures: Vec<Vec<u8>> = signed
            .get("signatures")
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|by_entity| by_entity.values())
            .filter_map(Value::as_object)
            .flat_map(|by_key| by_key.iter())
            .filter(|(key_id, _)| key_id.starts_with("ed25519:"))
            .filter_map(|(_, sig)| sig.as_str().and_then(decode_base64))
            .take(16)
            .collect();
        for (public_key, url) in keys {
            let Some(key_bytes) = decode_base64(&public_key) else { continue };
            let verifies = signatures.iter().any(|sig| {
                ruma::signatures::verify_canonical_json_bytes(
                    &SigningKeyAlgorithm::Ed25519,
                    &key_bytes,
                    sig,
                    signing_input.as_bytes(),
                )
                .is_ok()
            });
            if !verifies {
                continue;
            }
            match url {
                Some(url) if !self.client.key_is_valid(&url, &public_key).await => {
                    return Err(Error::forbidden("The identity server no longer vouches for the key of that invite"));
                }
                _ => return Ok(()),
            }
        }
        Err(Error::forbidden("The third-party invite's signature does not verify with the room's keys"))
    }
}

/// Unpadded or padded, standard or URL-safe base64 (identity servers use both).
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    Base64::<ruma::serde::base64::Standard>::parse(s)
        .map(|b| b.into_inner())
        .ok()
        .or_else(|| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok())
}
