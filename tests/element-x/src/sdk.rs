//! An Element X-like client: a matrix-sdk `Client` (password login, end-to-end
//! encryption, in-memory stores) forced onto native simplified sliding sync, a
//! `SyncService`, and the room list Element X shows: `RoomListService::all_rooms()`'s
//! entries (sorted by the SDK; filter "non-left"), mirrored into a watch channel.

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use futures_util::{pin_mut, StreamExt};
use matrix_sdk::{encryption::EncryptionSettings, ruma::OwnedUserId, sliding_sync::VersionBuilder, Client, Room};
use matrix_sdk_ui::{
    eyeball_im::Vector,
    room_list_service::{filters, RoomListItem},
    sync_service::{State, SyncService},
};
use tokio::{sync::watch, task::JoinHandle};

use crate::cs::{User, PASSWORD};

pub struct Device {
    pub client: Client,
    pub user_id: OwnedUserId,
    pub sync: Arc<SyncService>,
    /// The room list as Element X shows it, top first.
    pub list: watch::Receiver<Vec<Room>>,
    /// Every `SyncService` error seen, with the error text.
    pub sync_errors: Arc<Mutex<Vec<String>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Device {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        // A device left behind must not go on syncing through the next scenarios.
        let sync = self.sync.clone();
        tokio::spawn(async move { sync.stop().await });
    }
}

/// Element X restarts a failed sync service; after this many errors this client gives up
/// (the scenario's watchdog then reports what was awaited).
const MAX_RESTARTS: usize = 10;

/// A fresh device of `user`, logged in with its password through `homeserver` (the proxy).
pub async fn login(homeserver: &str, user: &User, device_name: &str) -> Result<Client> {
    let client = Client::builder()
        .homeserver_url(homeserver)
        // Native simplified sliding sync (MSC4186), without asking /versions: Hearth
        // advertises it only once this very test passes.
        .sliding_sync_version_builder(VersionBuilder::Native)
        // The seed's CONDUIT_WELL_KNOWN_CLIENT points at the user's real domain; a login
        // answer's `well_known` must not send the test there.
        .respect_login_well_known(false)
        .with_encryption_settings(EncryptionSettings::default())
        .build()
        .await
        .context("building the SDK client")?;
    client
        .matrix_auth()
        .login_username(&user.localpart, PASSWORD)
        .initial_device_display_name(device_name)
        .await
        .with_context(|| format!("password login of {}", user.user_id))?;
    Ok(client)
}

impl Device {
    /// Builds and starts the `SyncService`, and mirrors the room list.
    pub async fn start(client: Client) -> Result<Device> {
        let user_id = client.user_id().context("not logged in")?.to_owned();
        let sync = Arc::new(SyncService::builder(client.clone()).build().await.context("building the SyncService")?);
        let (tx, list) = watch::channel(Vec::new());
        let rls = sync.room_list_service();
        let all = rls.all_rooms().await.context("RoomListService::all_rooms")?;
        let list_task = tokio::spawn(async move {
            let (stream, controller) = all.entries_with_dynamic_adapters(1000);
            controller.set_filter(Box::new(filters::new_filter_non_left()));
            pin_mut!(stream);
            let mut items: Vector<RoomListItem> = Vector::new();
            while let Some(diffs) = stream.next().await {
                for diff in diffs {
                    diff.apply(&mut items);
                }
                tx.send_replace(items.iter().map(|item| Room::clone(item)).collect());
            }
        });

        let sync_errors = Arc::new(Mutex::new(Vec::new()));
        let mut state = sync.state();
        let errors = sync_errors.clone();
        let restarter = sync.clone();
        let state_task = tokio::spawn(async move {
            while let Some(s) = state.next().await {
                if let State::Error(e) = s {
                    let n = {
                        let mut errors = errors.lock().unwrap();
                        errors.push(format!("{e:#}"));
                        errors.len()
                    };
                    if n > MAX_RESTARTS {
                        break;
                    }
                    // Element X restarts the sync service when it fails; so does this client.
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    restarter.start().await;
                }
            }
        });
        sync.start().await;
        Ok(Device { client, user_id, sync, list, sync_errors, tasks: vec![list_task, state_task] })
    }

    pub fn errors(&self) -> Vec<String> {
        self.sync_errors.lock().unwrap().clone()
    }
}
