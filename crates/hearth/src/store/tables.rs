//! The names of every table, in one place: the database schema at a glance.
//!
//! Each service declares its typed tables (`Table<K, V>`) next to its own value types using
//! these names; the store only needs the names to create column families / SQL tables.
//! Adding a table is adding a name here. Renaming or removing one needs a migration.

use super::Table;

/// Server-wide facts: schema version, signing key, counters. Key: a fixed name.
pub const META_NAME: &str = "meta";
/// Accounts by full user id.
pub const ACCOUNTS: &str = "accounts";
/// Profile fields: (user id, field name) → JSON value.
pub const PROFILE_FIELDS: &str = "profile_fields";
/// Devices: (user id, device id) → device record.
pub const DEVICES: &str = "devices";
/// Access tokens by SHA-256 of the token → owning (user, device).
pub const ACCESS_TOKENS: &str = "access_tokens";

/// Rooms by id → room record (version, …).
pub const ROOMS: &str = "rooms";
/// PDUs by event id → signed canonical JSON.
pub const PDUS: &str = "pdus";
/// Per-event facts of ours: room, stream position, short id, sending device's txn id.
pub const EVENT_META: &str = "event_meta";
/// Interned event ids: event id → short id, and back.
pub const SHORT_EVENT_IDS: &str = "short_event_ids";
pub const EVENT_IDS_BY_SHORT: &str = "event_ids_by_short";
/// Interned (event type, state key) pairs: pair → short id, and back.
pub const SHORT_STATE_KEYS: &str = "short_state_keys";
pub const STATE_KEYS_BY_SHORT: &str = "state_keys_by_short";
/// State snapshots: snapshot id → diff from a parent snapshot.
pub const STATE_SNAPSHOTS: &str = "state_snapshots";
/// Short event id → snapshot of the room state before that event.
pub const STATE_BEFORE_EVENT: &str = "state_before_event";
/// Room id → current state snapshot, forward extremities and depth.
pub const ROOM_HEADS: &str = "room_heads";
/// (room id, stream position) → event id and the event as default push rules read it:
/// each room's timeline in order (see `rooms::TimelineEntry`).
pub const TIMELINE: &str = "timeline";
/// Stream position → (room id, event id): every event in global order.
pub const EVENT_STREAM: &str = "event_stream";
/// (user id, room id) → the user's membership in that room and when it last changed.
pub const USER_ROOMS: &str = "user_rooms";
/// (room id, user id) → membership, for member lists.
pub const ROOM_MEMBERS: &str = "room_members";
/// (user id, device id, transaction id) → event id, for idempotent sends.
pub const TRANSACTIONS: &str = "transactions";
/// Room alias → room id.
pub const ALIASES: &str = "aliases";
/// (user id, filter id) → filter definition JSON.
pub const FILTERS: &str = "filters";
/// Stream position → a non-event change (receipt, account data) written at it.
pub const STREAM_LOG: &str = "stream_log";
/// (room id, user id, receipt type, thread) → receipt.
pub const RECEIPTS: &str = "receipts";
/// (user id, room id or "", event type) → account data content and position.
pub const ACCOUNT_DATA: &str = "account_data";
/// Room id → () for rooms published in the public room directory.
pub const PUBLISHED_ROOMS: &str = "published_rooms";
/// (related-to event id, stream position) → the relating event.
pub const RELATIONS: &str = "relations";
/// (room id, stream position) → a content report, for the admins.
pub const REPORTS: &str = "reports";
/// User id → presence state, status message, last activity.
pub const PRESENCE: &str = "presence";
/// Registration token → its uses, limits and expiry.
pub const REGISTRATION_TOKENS: &str = "registration_tokens";
/// (user id, device id) → the device's signed identity keys.
pub const DEVICE_KEYS: &str = "device_keys";
/// (user id, device id, "algorithm:key id") → an unclaimed one-time key.
pub const ONE_TIME_KEYS: &str = "one_time_keys";
/// (user id, device id, algorithm) → the device's fallback key and whether it was used.
pub const FALLBACK_KEYS: &str = "fallback_keys";
/// (user id, "master" | "self_signing" | "user_signing") → cross-signing key.
pub const CROSS_SIGNING_KEYS: &str = "cross_signing_keys";
/// User id of another server → that user's devices and cross-signing keys, as last synced.
pub const REMOTE_DEVICE_LISTS: &str = "remote_device_lists";
/// (user id, device id, stream position) → a to-device message waiting for that device.
pub const TO_DEVICE: &str = "to_device";
/// (user id, device id, transaction id) → () for idempotent sendToDevice.
pub const TO_DEVICE_TXNS: &str = "to_device_txns";
/// (user id, version) → a key backup version.
pub const BACKUP_VERSIONS: &str = "backup_versions";
/// (user id, "version/room id", session id) → a backed-up room key.
pub const BACKUP_KEYS: &str = "backup_keys";

/// (server name, key id) → a remote server's verify key and how long it is valid.
pub const REMOTE_SERVER_KEYS: &str = "remote_server_keys";
/// Server name → its last key document, as it signed it (served again as a notary).
pub const REMOTE_KEY_DOCUMENTS: &str = "remote_key_documents";
/// (server name, key id) → the latest key document of the server that lists that key.
pub const REMOTE_KEY_DOCUMENTS_BY_ID: &str = "remote_key_documents_by_id";
/// SHA-256 of an OpenID token → the user it was issued to and its expiry.
pub const OPENID_TOKENS: &str = "openid_tokens";
/// Room id → who blocked it and when: rooms no local user may join or be invited to.
pub const BLOCKED_ROOMS: &str = "blocked_rooms";
/// (room id, thread root event id) → the stream position of the thread's newest event.
pub const THREAD_ROOTS: &str = "thread_roots";
/// Event id → (): events that an edit, a thread reply or a reference points at.
pub const BUNDLED_TARGETS: &str = "bundled_targets";
/// (user id, room id, stream position) → what that event does to the user's unread
/// counts, as the push follower judged it.
pub const UNREAD_MARKS: &str = "unread_marks";
pub const ALL: &[&str] = &[
    META_NAME,
    ACCOUNTS,
    PROFILE_FIELDS,
    DEVICES,
    ACCESS_TOKENS,
    ROOMS,
    PDUS,
    EVENT_META,
    SHORT_EVENT_IDS,
    EVENT_IDS_BY_SHORT,
    SHORT_STATE_KEYS,
    STATE_KEYS_BY_SHORT,
    STATE_SNAPSHOTS,
    STATE_BEFORE_EVENT,
    ROOM_HEADS,
    TIMELINE,
    EVENT_STREAM,
    USER_ROOMS,
    ROOM_MEMBERS,
    TRANSACTIONS,
    ALIASES,
    FILTERS,
    STREAM_LOG,
    RECEIPTS,
    ACCOUNT_DATA,
    PUBLISHED_ROOMS,
    RELATIONS,
    REPORTS,
    PRESENCE,
    REGISTRATION_TOKENS,
    DEVICE_KEYS,
    ONE_TIME_KEYS,
    FALLBACK_KEYS,
    CROSS_SIGNING_KEYS,
    REMOTE_DEVICE_LISTS,
    TO_DEVICE,
    TO_DEVICE_TXNS,
    BACKUP_VERSIONS,
    BACKUP_KEYS,
    REMOTE_SERVER_KEYS,
    REMOTE_KEY_DOCUMENTS,
    REMOTE_KEY_DOCUMENTS_BY_ID,
    OPENID_TOKENS,
    FEDERATION_QUEUE,
    FEDERATION_EDUS,
    FEDERATION_SENDER,
    FEDERATION_TXNS,
    REMOTE_INVITE_STATE,
    REMOTE_INVITES_BY_POS,
    BACKFILL,
    BACKFILL_ROWS,
    MEDIA,
    PENDING_MEDIA,
    REMOTE_MEDIA,
    URL_PREVIEWS,
    PUSHERS,
    NOTIFICATIONS,
    PUSH_STATE,
    ERASED_USERS,
    EXPIRING_EVENTS,
    BLOCKED_ROOMS,
    THREAD_ROOTS,
    BUNDLED_TARGETS,
    UNREAD_MARKS,
    APPSERVICE_ROOMS,
    APPSERVICE_STATE,
    THREEPIDS,
    USER_THREEPIDS,
    THREEPID_BINDINGS,
    THREEPID_SESSIONS,
    PEEKS,
];

/// (destination server, stream position) → event id: PDUs queued for another server.
pub const FEDERATION_QUEUE: &str = "federation_queue";
/// (destination server, sequence number) → an EDU that must not be lost (to-device
/// messages), queued durably for another server.
pub const FEDERATION_EDUS: &str = "federation_edus";
/// Fixed name → the stream position the federation sender has queued up to.
pub const FEDERATION_SENDER: &str = "federation_sender";
/// (user id, room id) → the stripped state sent with an invite to a room on another server.
pub const REMOTE_INVITE_STATE: &str = "remote_invite_state";
/// Stream position → (room, event): invites of local users to rooms on other servers, for
/// the push follower (they are outliers, not in the event stream).
pub const REMOTE_INVITES_BY_POS: &str = "remote_invites_by_pos";
/// (room id, n) → event id: history fetched from other servers, n counting back in time.
pub const BACKFILL: &str = "backfill";
/// Event id → its row in `BACKFILL`.
pub const BACKFILL_ROWS: &str = "backfill_rows";
/// Media id → record of a local upload (its file is under `media/`, named by hash).
pub const MEDIA: &str = "media";
/// Media id → an id created for an asynchronous upload, not uploaded yet.
pub const PENDING_MEDIA: &str = "pending_media";
/// (server name, media id) → record of another server's media fetched here.
pub const REMOTE_MEDIA: &str = "remote_media";
/// URL → a preview made of it, kept for a day.
pub const URL_PREVIEWS: &str = "url_previews";
/// (origin server, transaction id) → the answer given: inbound `/send` is idempotent.
pub const FEDERATION_TXNS: &str = "federation_txns";
/// (user id, app id, pushkey) → a pusher (push gateway registration) and its progress.
pub const PUSHERS: &str = "pushers";
/// (user id, stream position) → what the push rules did with that event for the user.
pub const NOTIFICATIONS: &str = "notifications";
/// `"position"` → the stream position push rules were evaluated up to.
pub const PUSH_STATE: &str = "push_state";
/// (application service list `<id>|<network>`, room id) → (): rooms a service published.
pub const APPSERVICE_ROOMS: &str = "appservice_rooms";
/// Application service id → how far its transactions have got.
pub const APPSERVICE_STATE: &str = "appservice_state";
/// (medium, address) → the account a validated third-party identifier belongs to.
pub const THREEPIDS: &str = "threepids";
/// (user id, medium, address) → when that identifier was validated and added.
pub const USER_THREEPIDS: &str = "user_threepids";
/// (user id, medium, address, identity server) → (): bindings this server made.
pub const THREEPID_BINDINGS: &str = "threepid_bindings";
/// Session id → a validation session of an address (a token sent to it).
pub const THREEPID_SESSIONS: &str = "threepid_sessions";
/// (user id, device id, room id) → the stream position a device began peeking into a room.
pub const PEEKS: &str = "peeks";
/// User id → when they asked to be erased (deactivation with `erase`).
pub const ERASED_USERS: &str = "erased_users";
/// (expiry time, event id) → room id: self-destructing messages (MSC2228) still to prune.
pub const EXPIRING_EVENTS: &str = "expiring_events";

/// The meta table is the store's own (schema version lives there).
pub const META: Table<String, Vec<u8>> = Table::new(META_NAME);
