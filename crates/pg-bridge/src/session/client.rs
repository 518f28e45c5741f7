//! [`ClientState`]: one client's session state as the bridge keeps it while the client is not
//! on the backend. Changed only by its own methods and by `Session`'s.

use std::collections::{BTreeSet, HashMap, HashSet};

use bytes::Bytes;

use super::Baseline;
use crate::SessionEvents;
use crate::settings::Settings;

/// How one of a client's prepared statements is put back on the backend, which holds only the
/// statements of the client whose turn it is.
#[derive(Debug, Clone)]
pub(crate) enum Recreate {
    /// The `Parse` message that made it.
    Parse(Bytes),
    /// A simple `Query` holding the `PREPARE` statement that made it.
    Query(Bytes),
    /// Made by a statement that cannot be run again alone (a `PREPARE` run by a function
    /// among other statements): gone once another client has had the backend.
    Lost,
}

/// A client's session state as the bridge keeps it while the client is not on the backend.
#[derive(Debug)]
pub(crate) struct ClientState {
    pub(crate) id: u32,
    /// Its connection settings: startup options and, where the backend takes connection
    /// defaults, `session_authorization` as its login role.
    pub(super) login: Settings,
    /// The role it logged in as.
    pub(super) user: String,
    /// What it changed at session level (and, without connection defaults, its startup
    /// options), as overrides of its connection defaults.
    pub(super) overrides: Settings,
    /// The `ParameterStatus` values it was last told.
    pub(super) reported: Settings,
    /// Custom (dotted) settings it set or reset, which `pg_settings` does not list.
    pub(super) custom: BTreeSet<String>,
    /// What may have changed during its turn, as the backend reported it.
    pub(super) events: SessionEvents,
    /// This client's prepared statements by name, and how each is made again; closed when it
    /// leaves.
    pub(super) statements: HashMap<Vec<u8>, Recreate>,
    /// Statements of the batch on its way, not yet on any backend session: a restart before
    /// it reaches the backend did not take them.
    pub(super) fresh: HashMap<Vec<u8>, Recreate>,
    /// Its statements the backend does not hold now (another client had the backend since),
    /// made again when the client next names them.
    pub(super) missing: HashSet<Vec<u8>>,
    /// The client holds session-level advisory locks, `WITH HOLD` cursors or temporary
    /// objects. They cannot be told apart from other clients' on the one backend session, so
    /// it keeps the lease until it lets go of them: others wait, and what it releases is only
    /// its own.
    pub(super) holds: bool,
    /// The backend session this client has used; state on an older one is gone.
    pub(super) generation: Option<u64>,
}

impl ClientState {
    /// A new client logging in as `user` with startup settings `startup`.
    pub(crate) fn new(id: u32, user: &str, startup: Settings, baseline: &Baseline) -> ClientState {
        let mut login = startup;
        let overrides = if baseline.connection_defaults {
            login.insert("session_authorization".to_owned(), user.to_owned());
            Settings::new()
        } else {
            // Applied as session settings; identity only when it is not the backend's.
            if user != baseline.user {
                login.insert("session_authorization".to_owned(), user.to_owned());
            }
            login.clone()
        };
        ClientState {
            id,
            login,
            user: user.to_owned(),
            overrides,
            reported: Settings::new(),
            custom: BTreeSet::new(),
            events: SessionEvents::default(),
            statements: HashMap::new(),
            fresh: HashMap::new(),
            missing: HashSet::new(),
            holds: false,
            generation: None,
        }
    }

    /// The client prepared a statement named `name`, which `recreate` makes again.
    pub(crate) fn prepared(&mut self, name: Vec<u8>, recreate: Recreate) {
        self.missing.remove(&name);
        self.fresh.insert(name, recreate);
    }

    /// The client closed its statement `name`.
    pub(crate) fn closed(&mut self, name: &[u8]) {
        self.statements.remove(name);
        self.fresh.remove(name);
        self.missing.remove(name);
    }

    /// Forgets every prepared statement, returning the names of those the backend holds, to
    /// close.
    pub(crate) fn take_statements(&mut self) -> Vec<Vec<u8>> {
        let missing = std::mem::take(&mut self.missing);
        self.fresh
            .drain()
            .chain(self.statements.drain())
            .map(|(name, _)| name)
            .filter(|n| !missing.contains(n))
            .collect()
    }

    /// Of the statements `names` (as a batch names them), those the backend lacks, with how
    /// to make each again (each once).
    pub(crate) fn to_recreate(&self, names: &[Vec<u8>]) -> Vec<(Vec<u8>, Recreate)> {
        let mut res: Vec<(Vec<u8>, Recreate)> = Vec::new();
        for name in names {
            if self.missing.contains(name)
                && !res.iter().any(|(done, _)| done == name)
                && let Some(recreate) = self.statements.get(name)
            {
                res.push((name.clone(), recreate.clone()));
            }
        }
        res
    }

    /// The batch that made the fresh statements reached the backend.
    pub(crate) fn batch_sent(&mut self) {
        let fresh = std::mem::take(&mut self.fresh);
        self.statements.extend(fresh);
    }

    /// The backend holds statement `name` again.
    pub(crate) fn recreated(&mut self, name: &[u8]) {
        self.missing.remove(name);
    }

    /// Whether the backend holds any of the client's statements.
    pub(super) fn statements_on_backend(&self) -> bool {
        !self.fresh.is_empty() || self.statements.keys().any(|name| !self.missing.contains(name))
    }

    /// Whether something of the client's lived on the backend session before the batch now on
    /// its way: its prepared statements, session locks, cursors, temporary objects.
    pub(crate) fn had_backend_state(&self) -> bool {
        !self.statements.is_empty() || self.holds
    }

    /// The `LISTEN`s and `UNLISTEN`s of the client's turn, if any ran (empty when the backend
    /// could not tell them apart), taken.
    pub(crate) fn take_listens(&mut self) -> Option<Vec<crate::ListenOp>> {
        if !self.events.listen {
            return None;
        }
        self.events.listen = false;
        Some(std::mem::take(&mut self.events.listens))
    }

    /// Whether a role was created, altered or dropped in the client's turn: logins checked
    /// earlier may no longer hold.
    pub(crate) fn roles_changed(&self) -> bool {
        self.events.roles
    }

    /// Whether the client keeps the backend between transactions.
    pub(crate) fn holds(&self) -> bool {
        self.holds
    }

    /// Whether the client left something on the backend that needs cleaning up.
    pub(crate) fn has_backend_state(&self) -> bool {
        !self.statements.is_empty() || !self.fresh.is_empty() || self.holds
    }

    /// Its connection settings (startup options and login role).
    pub(crate) fn login(&self) -> &Settings {
        &self.login
    }

    /// Its connection settings as the backend spells them (see `Started::login`).
    pub(crate) fn set_login(&mut self, login: Settings) {
        if self.overrides == self.login {
            // Without connection defaults they are its session settings too.
            self.overrides = login.clone();
        }
        self.login = login;
    }

    /// Records the `ParameterStatus` values it was told at startup.
    pub(crate) fn set_reported(&mut self, reported: Settings) {
        self.reported = reported;
    }
}
