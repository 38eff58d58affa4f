//! User-interactive authentication (UIA): the 401 dance that guards registration,
//! password changes, deactivation and device deletion.
//!
//! Sessions live in memory, bound to the purpose, the subject (what the operation acts on,
//! such as the devices to delete) and (when there is one) the user that started them, and
//! expire after [`SESSION_TTL`]. Continuing a session for another subject is 403, as on
//! Synapse: a session someone completed for one device cannot delete another. A server
//! restart simply makes clients start over, which every client handles. The number of live
//! sessions is bounded.
//!
//! Registration sessions also remember the request's parameters (a client may send them
//! only with the first request, as sytest and older clients do) and, once the account is
//! made, its user id: a client retrying the final request after a lost response gets the
//! same account again instead of a second one or an error.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use ruma::{
    api::client::uiaa::{AuthData, AuthType, UserIdentifier},
    OwnedUserId, UserId,
};
use serde_json::{json, Map, Value};

use super::Users;
use crate::error::{Error, Result};

pub const SESSION_TTL: Duration = Duration::from_secs(15 * 60);
pub const MAX_SESSIONS: usize = 10_000;

/// What a UIA session authorises; a session started for one cannot complete another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Register,
    ChangePassword,
    Deactivate,
    DeleteDevices,
    SigningKeys,
    AddThreepid,
    ResetPassword,
}

struct Session {
    /// The registration token that passed its stage, if any (consumed on success).
    registration_token: Option<String>,
    purpose: Purpose,
    /// What the operation acts on; a session cannot be carried over to another.
    subject: String,
    user: Option<OwnedUserId>,
    completed: Vec<AuthType>,
    /// The parameters of the request (its body without `auth`), for registration.
    params: Map<String, Value>,
    /// The account a completed registration session made.
    registered: Option<OwnedUserId>,
    /// The address an `m.login.email.identity` stage proved: (medium, address, when).
    threepid: Option<(String, String, u64)>,
    expires: Instant,
}

/// Checks registration tokens; the static token from the configuration for now.
pub trait TokenCheck: Send + Sync {
    fn is_valid(&self, token: &str) -> Result<bool>;
}

pub struct Uiaa {
    ttl: Duration,
    users: Arc<Users>,
    tokens: Arc<dyn TokenCheck>,
    sessions: Mutex<HashMap<String, Session>>,
}

/// What a completed UIA proved, beyond "it is done".
#[derive(Debug, Default)]
pub struct Completed {
    /// The registration token used, to be consumed when the account is created.
    pub registration_token: Option<String>,
    /// The session that completed.
    pub session: String,
    /// The parameters to act on: this request's, or, when it sent none, the ones the
    /// session was started with.
    pub params: Map<String, Value>,
    /// The address an `m.login.email.identity` stage proved: (medium, address, when).
    pub threepid: Option<(String, String, u64)>,
}

/// One operation behind UIA: what it is for, what it acts on, who asks, and the request's
/// parameters (remembered for registration).
pub struct Operation<'a> {
    pub purpose: Purpose,
    pub subject: String,
    pub user: Option<&'a UserId>,
    pub params: Map<String, Value>,
}

/// The flows an endpoint offers, each a list of stages.
pub type Flows = Vec<Vec<AuthType>>;

impl Uiaa {
    pub fn new(users: Arc<Users>, tokens: Arc<dyn TokenCheck>) -> Self {
        Self::with_ttl(users, tokens, SESSION_TTL)
    }

    /// As [`Uiaa::new`], with sessions expiring after `ttl`.
    pub fn with_ttl(users: Arc<Users>, tokens: Arc<dyn TokenCheck>, ttl: Duration) -> Self {
        Uiaa { ttl, users, tokens, sessions: Mutex::new(HashMap::new()) }
    }

    /// Succeeds once the client has completed one of `flows`; otherwise answers 401 with
    /// what remains. `user` is the authenticated caller, if any: password stages must prove
    /// that same user.
    pub async fn check(
        &self,
        purpose: Purpose,
        user: Option<&UserId>,
        flows: &Flows,
        auth: Option<&AuthData>,
    ) -> Result<Completed> {
        self.check_bound(Operation { purpose, subject: String::new(), user, params: Map::new() }, flows, auth).await
    }

    /// The account a completed registration session made, and the parameters it was made
    /// with (less the password), if `session` is one.
    pub fn registered_by(&self, session: &str) -> Option<(OwnedUserId, Map<String, Value>)> {
        let sessions = self.sessions.lock();
        let s = sessions.get(session).filter(|s| s.purpose == Purpose::Register && s.expires > Instant::now())?;
        Some((s.registered.clone()?, s.params.clone()))
    }

    /// Records the account a completed registration session made (see the module doc),
    /// and forgets the password it was sent.
    pub fn set_registered(&self, session: &str, user_id: &UserId) {
        if let Some(s) = self.sessions.lock().get_mut(session) {
            s.registered = Some(user_id.to_owned());
            s.params.remove("password");
            s.params.remove("guest_access_token");
        }
    }

    /// As [`Uiaa::check`], for an operation on a subject and with parameters to remember.
    pub async fn check_bound(&self, op: Operation<'_>, flows: &Flows, auth: Option<&AuthData>) -> Result<Completed> {
        let Operation { purpose, subject, user, params } = op;
        let Some(auth) = auth else {
            let session = self.start(purpose, &subject, user, params)?;
            return Err(self.challenge(flows, &session, &[], None));
        };
        let session = match auth.session() {
            Some(id) => {
                let mut sessions = self.sessions.lock();
                match sessions.get_mut(id) {
                    Some(s)
                        if s.purpose == purpose
                            && s.user.as_deref() == user
                            && s.expires > Instant::now()
                            && s.registered.is_none() =>
                    {
                        if s.subject != subject {
                            return Err(Error::forbidden(
                                "The requested operation changed during the authentication session",
                            ));
                        }
                        if !params.is_empty() {
                            s.params = params;
                        }
                        id.to_owned()
                    }
                    _ => {
                        drop(sessions);
                        let session = self.start(purpose, &subject, user, params)?;
                        return Err(self.challenge(
                            flows,
                            &session,
                            &[],
                            Some(("M_UNKNOWN", "Unknown or expired UIA session")),
                        ));
                    }
                }
            }
            // A client that sends a stage straight away, without a session, is accepted.
            None => self.start(purpose, &subject, user, params)?,
        };

        let stage = auth.auth_type();
        let offered = stage.as_ref().is_some_and(|t| flows.iter().any(|f| f.contains(t)));
        let passed = if offered { self.verify(auth, user).await? } else { false };
        // The address an e-mail stage proved, kept with the session for the operation.
        let proved = match (passed, auth) {
            (true, AuthData::EmailIdentity(e)) => Some(
                self.users
                    .validated(e.thirdparty_id_creds.sid.as_str(), e.thirdparty_id_creds.client_secret.as_str())?,
            ),
            _ => None,
        };
        let completed = {
            let mut sessions = self.sessions.lock();
            let Some(s) = sessions.get_mut(&session) else {
                return Err(self.challenge(flows, &session, &[], Some(("M_UNKNOWN", "UIA session vanished"))));
            };
            if let (true, Some(t)) = (passed, stage.clone()) {
                if !s.completed.contains(&t) {
                    s.completed.push(t);
                }
                if let AuthData::RegistrationToken(rt) = auth {
                    s.registration_token = Some(rt.token.clone());
                }
            }
            if proved.is_some() {
                s.threepid = proved;
            }
            (s.completed.clone(), s.registration_token.clone(), s.threepid.clone())
        };
        let (completed, registration_token, threepid) = completed;
        if flows.iter().any(|f| f.iter().all(|t| completed.contains(t))) {
            let mut sessions = self.sessions.lock();
            // A registration session stays until it expires, so that a retry finds the
            // account it made ([`Uiaa::registered_by`]); others end here.
            let params = if purpose == Purpose::Register {
                sessions.get(&session).map(|s| s.params.clone()).unwrap_or_default()
            } else {
                sessions.remove(&session).map(|s| s.params).unwrap_or_default()
            };
            return Ok(Completed { registration_token, session, params, threepid });
        }
        let error = match (offered, passed) {
            (false, _) => Some(("M_UNRECOGNIZED", "This authentication stage is not offered here")),
            (true, false) => Some(match stage {
                Some(AuthType::RegistrationToken) => ("M_FORBIDDEN", "Invalid registration token"),
                Some(AuthType::EmailIdentity) => ("M_THREEPID_AUTH_FAILED", "That address has not been validated"),
                _ => ("M_FORBIDDEN", "Invalid password"),
            }),
            (true, true) => None,
        };
        Err(self.challenge(flows, &session, &completed, error))
    }

    fn start(
        &self,
        purpose: Purpose,
        subject: &str,
        user: Option<&UserId>,
        params: Map<String, Value>,
    ) -> Result<String> {
        let mut sessions = self.sessions.lock();
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS {
            return Err(Error::matrix(
                http::StatusCode::TOO_MANY_REQUESTS,
                "M_LIMIT_EXCEEDED",
                "Too many authentication sessions in progress",
            ));
        }
        let id: String = crate::random::alphanumeric(24);
        sessions.insert(
            id.clone(),
            Session {
                registration_token: None,
                purpose,
                subject: subject.to_owned(),
                user: user.map(ToOwned::to_owned),
                completed: Vec::new(),
                params,
                registered: None,
                threepid: None,
                expires: now + self.ttl,
            },
        );
        Ok(id)
    }

    fn challenge(&self, flows: &Flows, session: &str, completed: &[AuthType], error: Option<(&str, &str)>) -> Error {
        let flows: Vec<Value> =
            flows.iter().map(|f| json!({ "stages": f.iter().map(|t| t.as_str()).collect::<Vec<_>>() })).collect();
        let mut body = json!({
            "flows": flows,
            "params": {},
            "session": session,
            "completed": completed.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
        });
        if let Some((errcode, message)) = error {
            body["errcode"] = json!(errcode);
            body["error"] = json!(message);
        }
        Error::Uiaa(body)
    }

    async fn verify(&self, auth: &AuthData, user: Option<&UserId>) -> Result<bool> {
        match auth {
            AuthData::Dummy(_) => Ok(true),
            AuthData::EmailIdentity(e) => Ok(self
                .users
                .validated(e.thirdparty_id_creds.sid.as_str(), e.thirdparty_id_creds.client_secret.as_str())
                .is_ok_and(|(medium, _, _)| medium == "email")),
            AuthData::RegistrationToken(t) => self.tokens.is_valid(&t.token),
            AuthData::Password(p) => {
                let UserIdentifier::Matrix(id) = &p.identifier else { return Ok(false) };
                let Some(claimed) = self.users.parse_login_user(&id.user) else { return Ok(false) };
                // The password must be the caller's own: someone else's (a stolen access
                // token and the thief's own password) is refused outright, as on Synapse.
                if user.is_some_and(|u| u != claimed) {
                    return Err(Error::forbidden("The password given is not the caller's"));
                }
                let users = self.users.clone();
                let password = p.password.clone();
                tokio::task::spawn_blocking(move || users.check_password(&claimed, &password))
                    .await
                    .map_err(|e| Error::internal(format!("password check task: {e}")))?
            }
            _ => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Backend, Durability, Store};

    struct AnyToken;
    impl TokenCheck for AnyToken {
        fn is_valid(&self, _: &str) -> Result<bool> {
            Ok(true)
        }
    }

    fn session_of(err: Error) -> String {
        match err {
            Error::Uiaa(body) => body["session"].as_str().unwrap_or_default().to_owned(),
            other => panic!("expected a UIA challenge, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn sessions_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), Backend::Sqlite, Durability::Process, 8).unwrap());
        let users = Arc::new(Users::new(store, "x.test".try_into().unwrap()));
        let uiaa = Uiaa::with_ttl(users, Arc::new(AnyToken), Duration::from_millis(50));
        let flows: Flows = vec![vec![AuthType::RegistrationToken, AuthType::Dummy]];
        let session = session_of(uiaa.check(Purpose::Register, None, &flows, None).await.unwrap_err());
        let token_stage: AuthData = serde_json::from_value(
            serde_json::json!({"type": "m.login.registration_token", "token": "t", "session": session}),
        )
        .unwrap();
        // Within its lifetime the session accumulates stages.
        let err = uiaa.check(Purpose::Register, None, &flows, Some(&token_stage)).await.unwrap_err();
        assert_eq!(session_of(err), session);
        tokio::time::sleep(Duration::from_millis(80)).await;
        // Expired: the next stage starts over in a new session.
        let dummy: AuthData =
            serde_json::from_value(serde_json::json!({"type": "m.login.dummy", "session": session})).unwrap();
        let err = uiaa.check(Purpose::Register, None, &flows, Some(&dummy)).await.unwrap_err();
        assert_ne!(session_of(err), session);
    }
}
