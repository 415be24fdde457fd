//! How to join: where the master is and who this member is, from code or
//! from the `COHORT_*` environment.

use crate::Error;
use cohort_proto::Role;
use cohort_proto::auth::Bearer;
use std::collections::HashMap;
use std::time::Duration;

/// How to join: where the master is, who this member is.
#[derive(Clone, Debug)]
pub struct MemberBuilder {
    pub(crate) master: String,
    /// Every master's URL, in the order given (several with failover).
    pub(crate) masters: Vec<String>,
    pub(crate) role: Role,
    pub(crate) name: Option<String>,
    /// The app it belongs to (workers; empty: `worker`).
    pub(crate) app: String,
    pub(crate) secret: String,
    pub(crate) token: Option<String>,
    /// Read again before every connect, so a rotated token is picked up.
    pub(crate) token_file: Option<std::path::PathBuf>,
    pub(crate) labels: HashMap<String, String>,
    /// Whose membership events this member hears (`Hello.watch`); `None`:
    /// the role's default ([`MemberBuilder::watching`]).
    pub(crate) watch: Option<Option<cohort_proto::pb::EventFilter>>,
    pub(crate) version: String,
    pub(crate) join_timeout: Duration,
    pub(crate) tls: crate::TlsFiles,
}

impl MemberBuilder {
    /// A member of `role` joining the master at `master`
    /// (`http://host:port`, or a bare `host:port`), or any of several
    /// masters that fail over (a comma-separated list): it joins the
    /// leader, following a standby's `cohort-leader` answer.
    pub fn new(master: impl Into<String>, role: Role) -> Self {
        let master = master.into();
        let masters: Vec<String> = master
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(url)
            .collect();
        MemberBuilder {
            master: masters.join(","),
            masters,
            role,
            name: None,
            app: String::new(),
            secret: String::new(),
            token: None,
            token_file: None,
            labels: HashMap::new(),
            watch: None,
            version: String::new(),
            join_timeout: Duration::from_secs(30),
            tls: crate::TlsFiles::default(),
        }
    }

    /// Settings from the process environment (see [`crate::env`]).
    pub fn from_env() -> Result<Self, Error> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Settings from any key lookup (a map in tests).
    pub fn from_lookup(env: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        use crate::env::*;
        let master = env(MASTER).unwrap_or_else(|| "http://127.0.0.1:7420".into());
        let role = match env(ROLE) {
            Some(r) => r
                .parse()
                .map_err(|e: String| Error::Config(format!("{ROLE}: {e}")))?,
            None => Role::Worker,
        };
        let mut b = MemberBuilder::new(master, role);
        b.name = env(NAME).filter(|n| !n.is_empty());
        if let Some(app) = env(APP).filter(|a| !a.is_empty()) {
            cohort_proto::check_app(&app).map_err(|e| Error::Config(format!("{APP}: {e}")))?;
            b.app = app;
        }
        b.secret = env(SECRET).unwrap_or_default();
        match (env(TOKEN), env(TOKEN_FILE)) {
            (Some(t), _) => b.token = first_token(&t),
            (None, Some(path)) => {
                b = b.token_file(&path)?;
            }
            (None, None) => {}
        }
        let read = |var: &str| -> Result<Option<Vec<u8>>, Error> {
            env(var)
                .filter(|p| !p.is_empty())
                .map(|p| std::fs::read(&p).map_err(|e| Error::Config(format!("{var} {p}: {e}"))))
                .transpose()
        };
        b.tls.ca = read(TLS_CA)?;
        b.tls.identity = match (read(TLS_CERT)?, read(TLS_KEY)?) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(Error::Config(format!(
                    "set both {TLS_CERT} and {TLS_KEY}, or neither"
                )));
            }
        };
        Ok(b)
    }

    /// Joins as this role instead of the one from the environment.
    pub fn role(mut self, role: Role) -> Self {
        self.role = role;
        self
    }

    /// Joins app `app` (a worker; `COHORT_APP`): sends to `app:APP` and
    /// random-of-app targets reach it. Without one a worker is in app
    /// `worker`.
    pub fn app(mut self, app: impl Into<String>) -> Self {
        self.app = app.into();
        self
    }

    /// Asks for this name instead of one the master assigns.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Hears every member's events ([`crate::Event::Member`]: READY,
    /// SUSPECT, LEFT, ...). The default for agents.
    pub fn watch_all(mut self) -> Self {
        self.watch = Some(Some(cohort_proto::pb::EventFilter {
            all: true,
            ..Default::default()
        }));
        self
    }

    /// Hears the events of every member of `role` (adds to what is watched).
    pub fn watch_role(mut self, role: Role) -> Self {
        self.explicit_watch().roles.push(role.into());
        self
    }

    /// Hears the events of the member named `name` (adds to what is watched).
    pub fn watch_member(mut self, name: impl Into<String>) -> Self {
        self.explicit_watch().names.push(name.into());
        self
    }

    /// Hears no member's events (the default for workers). ClusterReady
    /// and this member's own drain still come.
    pub fn watch_none(mut self) -> Self {
        self.watch = Some(None);
        self
    }

    fn explicit_watch(&mut self) -> &mut cohort_proto::pb::EventFilter {
        let filter = self.watch.get_or_insert(None);
        filter.get_or_insert_with(Default::default)
    }

    /// What this member watches: what was asked, or its role's default. An
    /// agent does the cluster's shared duties and hears about every member;
    /// a worker hears about none unless it asks (N workers hearing about
    /// each other would be N² frames).
    pub(crate) fn watching(&self) -> Option<cohort_proto::pb::EventFilter> {
        match &self.watch {
            Some(explicit) => explicit.clone(),
            None => (self.role == Role::Agent).then(|| cohort_proto::pb::EventFilter {
                all: true,
                ..Default::default()
            }),
        }
    }

    /// Adds a label shown in `ListMembers`.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// The member's software version, shown in `ListMembers`.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Sends the token in `path`: its first non-empty line (a master's
    /// token file may list the next token too, while rotating). The file is
    /// read again before every reconnect, so a rotated token is picked up
    /// without a restart.
    pub fn token_file(mut self, path: impl AsRef<std::path::Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        self.token = Some(read_token(path)?);
        self.token_file = Some(path.to_path_buf());
        Ok(self)
    }

    /// The token to send now: the token file's, read again, or the last
    /// one known if it cannot be read.
    pub(crate) fn current_token(&self) -> Option<String> {
        let Some(path) = &self.token_file else {
            return self.token.clone();
        };
        match read_token(path) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the token file again; sending the last token read");
                self.token.clone()
            }
        }
    }

    /// A channel to the master with this builder's address and TLS, and the
    /// bearer token to send on it: for Control API clients (`cohortctl`)
    /// that reach the master the way members do.
    pub async fn control_channel(&self) -> Result<(tonic::transport::Channel, Bearer), Error> {
        self.control_channel_to(self.first_master()).await
    }

    /// [`control_channel`](Self::control_channel) to one master of several
    /// (`master` as in [`masters`](Self::masters) or a standby's
    /// `cohort-leader` answer).
    pub async fn control_channel_to(
        &self,
        master: &str,
    ) -> Result<(tonic::transport::Channel, Bearer), Error> {
        let bearer = Bearer::new(self.current_token().as_deref()).map_err(Error::Config)?;
        let channel = crate::transport::connect(&url(master), &self.tls).await?;
        Ok((channel, bearer))
    }

    /// Every master's URL, in the order given.
    pub fn masters(&self) -> &[String] {
        &self.masters
    }

    /// The first master's URL (`http://127.0.0.1:7420` when none is given).
    pub(crate) fn first_master(&self) -> &str {
        self.masters
            .first()
            .map_or("http://127.0.0.1:7420", String::as_str)
    }

    /// The master's address, as given (a comma-separated list with several).
    pub fn master(&self) -> &str {
        &self.master
    }

    /// The bearer token sent to the master.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// TLS material for an `https://` master.
    pub fn tls(mut self, tls: crate::TlsFiles) -> Self {
        self.tls = tls;
        self
    }

    /// How long [`join`](Self::join) keeps retrying an unreachable master
    /// (30 s unless set; zero: one attempt). One attempt that gets no
    /// answer, a master that accepts the connection but is stopped or
    /// hung, is given up after 15 s.
    pub fn join_timeout(mut self, t: Duration) -> Self {
        self.join_timeout = t;
        self
    }
}

/// The first non-empty line, trimmed.
fn first_token(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

fn read_token(path: &std::path::Path) -> Result<String, Error> {
    let file = crate::env::TOKEN_FILE;
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("{file} {}: {e}", path.display())))?;
    first_token(&text)
        .ok_or_else(|| Error::Config(format!("{file} {}: the file is empty", path.display())))
}

/// A master's URL: `http://` unless a scheme is given.
pub fn url(master: &str) -> String {
    if master.contains("://") {
        master.to_string()
    } else {
        format!("http://{master}")
    }
}
