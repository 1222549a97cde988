//! What each control command does: one `match` over [`Command`], one
//! method per command. Attaching a volume — opening it, unwrapping its key
//! through the KMS, locking it — is the [`Attacher`]'s (the command line
//! gives `serve`'s own, so a runtime attach is a start-up attach); the
//! export set is the NBD [`Server`]'s; this file keeps only what neither
//! knows: which volume each export is.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use chrono::{DateTime, SecondsFormat, Utc};

use super::active_snapshot::ActiveSnapshot;
use super::metrics::TaskMetrics;
use super::protocol::{
    Command, ExportInfo, NewDataKey, ReplyBody, SnapshotSessionInfo, TakeOverMode, VolumeInfo,
};
use super::reencryption_job::ReencryptionJob;
use crate::nbd::{Export, ExportStatus, Server};
use crate::volume::{FrozenView, NewSize, Volume};

/// A volume attached and ready to export.
pub struct Attachment {
    pub export: Export,
    /// What clients with a verified TLS client certificate see as its
    /// description.
    pub certified_description: String,
    pub info: VolumeInfo,
    /// The volume itself, for snapshots through the server (weak: the
    /// export owns it, and a detach closes it).
    pub volume: Weak<Volume>,
}

/// Attaches volumes for the control socket, in two steps so that a
/// request that cannot succeed (a bad argument, a name in use) is refused
/// before the KMS is asked for anything.
pub trait Attacher: Send + Sync + 'static {
    /// A checked request, ready to attach.
    type Plan: Send;

    /// Parses `volume` (`VOLUME[=NAME][:ro]`) and checks the options.
    fn plan(
        &self,
        volume: &str,
        take_over: Option<TakeOverMode>,
    ) -> Result<Planned<Self::Plan>, String>;

    /// Opens the volume, unwraps its key, locks it.
    fn attach(&self, plan: Self::Plan) -> impl Future<Output = Result<Attachment, String>> + Send;

    /// Begins a re-encryption of the attached `handle` (its address
    /// `volume`) to `new_key`, or checks one is in progress to resume
    /// (`None`). Returns the bytes already under the new key.
    fn begin_reencryption(
        &self,
        volume: &str,
        handle: &Arc<Volume>,
        new_key: Option<NewDataKey>,
    ) -> impl Future<Output = Result<u64, String>> + Send;

    /// Runs the re-encryption begun to its end, reporting to `job` after
    /// each step and stopping when it asks; the new key's ARN.
    fn run_reencryption(
        &self,
        volume: String,
        handle: Arc<Volume>,
        max_rate: Option<u64>,
        job: Arc<ReencryptionJob>,
    ) -> impl Future<Output = Result<(), String>> + Send + 'static;
}

/// An attach request checked and ready.
pub struct Planned<P> {
    /// The export name it will get.
    pub name: String,
    /// The volume's address, as [`VolumeInfo::volume`] will show it.
    pub volume: String,
    pub plan: P,
}

/// Where clients reach an export, by name (the server's listeners).
pub type UriMaker = Box<dyn Fn(&str) -> Vec<String> + Send + Sync>;

pub struct Controller<A> {
    server: Server,
    attacher: A,
    uris: UriMaker,
    /// By export name (shared with the re-encryption tasks, which update
    /// the key ARN when they complete).
    volumes: Arc<Mutex<BTreeMap<String, VolumeInfo>>>,
    /// The volumes themselves, by export name (for snapshots).
    handles: Mutex<BTreeMap<String, Weak<Volume>>>,
    /// Snapshots being taken, by export name (shared with the metrics).
    snapshots: Arc<Mutex<BTreeMap<String, ActiveSnapshot>>>,
    /// Re-encryptions run in the server, by export name: the running one,
    /// or the last one's outcome (shared with the metrics).
    reencryptions: Arc<Mutex<BTreeMap<String, Arc<ReencryptionJob>>>>,
    /// Exports whose re-encryption is being begun (its KMS calls take a
    /// while): a second request meanwhile is refused instead of starting a
    /// second stepping task beside the first (twice the rate).
    beginning: Mutex<BTreeSet<String>>,
}

/// An export's place in [`Controller::beginning`], given back on drop.
struct Beginning<'a> {
    set: &'a Mutex<BTreeSet<String>>,
    name: String,
}

impl<'a> Beginning<'a> {
    /// `None` when a re-encryption of `name` is already being begun.
    fn claim(set: &'a Mutex<BTreeSet<String>>, name: &str) -> Option<Self> {
        let mut names = set.lock().unwrap_or_else(PoisonError::into_inner);
        names.insert(name.to_string()).then(|| Self {
            set,
            name: name.to_string(),
        })
    }
}

impl Drop for Beginning<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.name);
    }
}

impl<A: Attacher> Controller<A> {
    /// `volumes`: the exports the server started with, by name.
    pub fn new(
        server: Server,
        attacher: A,
        uris: UriMaker,
        volumes: Vec<(String, VolumeInfo)>,
    ) -> Self {
        Self {
            server,
            attacher,
            uris,
            volumes: Arc::new(Mutex::new(volumes.into_iter().collect())),
            handles: Mutex::default(),
            snapshots: Arc::default(),
            reencryptions: Arc::default(),
            beginning: Mutex::default(),
        }
    }

    /// The snapshot and re-encryption progress of the exports, for a
    /// metrics registry.
    pub fn task_metrics(&self) -> TaskMetrics {
        TaskMetrics {
            snapshots: self.snapshots.clone(),
            reencryptions: self.reencryptions.clone(),
        }
    }

    /// The volumes the server started with, by export name, for
    /// snapshots through the server.
    pub fn with_volume_handles(self, handles: Vec<(String, Weak<Volume>)>) -> Self {
        *self.handles.lock().unwrap_or_else(PoisonError::into_inner) =
            handles.into_iter().collect();
        self
    }

    pub async fn handle(&self, command: Command) -> ReplyBody {
        match command {
            Command::Attach { volume, take_over } => self.attach(&volume, take_over).await,
            Command::Detach { name, force } => self.detach(&name, force).await,
            Command::Status => ReplyBody::Status {
                exports: self.status(),
            },
            // A session's commands are answered by the session
            // (`snapshot_session.rs`), which takes the connection over.
            Command::SnapshotBegin { .. } => {
                ReplyBody::error("snapshot_begin starts a session of its own connection")
            }
            Command::SnapshotRead { .. } | Command::SnapshotEnd { .. } => {
                ReplyBody::error("no snapshot session on this connection (snapshot_begin first)")
            }
            Command::Grow { volume, size, add } => {
                let size = if add {
                    NewSize::Plus(size)
                } else {
                    NewSize::To(size)
                };
                self.grow(&volume, size).await
            }
            Command::Reencrypt {
                volume,
                new_key,
                max_rate,
            } => self.reencrypt(&volume, new_key, max_rate).await,
        }
    }

    /// The attached volume whose uuid is `uuid`: its export name and the
    /// volume, held open for a snapshot.
    pub(super) fn volume_by_uuid(&self, uuid: &str) -> Result<(String, Arc<Volume>), String> {
        let name = self
            .known()
            .iter()
            .find(|(_, v)| v.volume_uuid == uuid)
            .map(|(name, _)| name.clone())
            .ok_or_else(|| format!("volume {uuid} is not attached by this server"))?;
        let handle = self
            .handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&name)
            .and_then(Weak::upgrade)
            .ok_or_else(|| format!("export {name:?} is being detached"))?;
        Ok((name, handle))
    }

    /// Records a snapshot session of export `name`; refused while one is.
    pub(super) fn snapshot_started(
        &self,
        name: &str,
        session: ActiveSnapshot,
    ) -> Result<(), String> {
        let mut snapshots = self
            .snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if snapshots.contains_key(name) {
            return Err(format!(
                "a snapshot of export {name:?} is already being taken"
            ));
        }
        if self.running_reencryption(name).is_some() {
            return Err(format!(
                "export {name:?} is being re-encrypted: its chunks are under two keys until that completes (`envol status` shows its progress)"
            ));
        }
        snapshots.insert(name.to_string(), session);
        Ok(())
    }

    /// The frozen view of export `name`'s session, for `status`.
    pub(super) fn snapshot_viewing(&self, name: &str, view: Arc<FrozenView>) {
        if let Some(active) = self
            .snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(name)
        {
            active.view = Some(view);
        }
    }

    pub(super) fn snapshot_ended(&self, name: &str) {
        self.snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
    }

    /// The volume behind each export, by name, and its device: for a
    /// server that must close them itself (fenced).
    pub fn volumes(&self) -> Vec<(String, Export)> {
        let volumes = self.known();
        self.server
            .exports()
            .into_iter()
            .filter_map(|e| volumes.get(&e.name).map(|v| (v.volume.clone(), e)))
            .collect()
    }

    fn known(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, VolumeInfo>> {
        self.volumes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn attach(&self, volume: &str, take_over: Option<TakeOverMode>) -> ReplyBody {
        let Planned { name, volume, plan } = match self.attacher.plan(volume, take_over) {
            Ok(planned) => planned,
            Err(message) => return ReplyBody::error(message),
        };
        if let Some(problem) = self.conflict(&name, &volume) {
            return ReplyBody::error(problem);
        }
        let attachment = match self.attacher.attach(plan).await {
            Ok(a) => a,
            Err(message) => return ReplyBody::error(message),
        };
        let info = attachment.info.clone();
        let export = attachment.export.clone();
        if let Err(e) = self
            .server
            .attach(attachment.export, Some(attachment.certified_description))
        {
            // Raced another attach of the same name: let the volume go
            // (its lock, its key) before answering.
            let device = export.device;
            let _ = tokio::task::spawn_blocking(move || drop(device)).await;
            return ReplyBody::error(e.to_string());
        }
        tracing::info!("attached {} as export {:?}", info.volume, export.name);
        self.known().insert(export.name.clone(), info);
        self.handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(export.name.clone(), attachment.volume);
        let status = self.server.status();
        let Some(info) = status
            .iter()
            .find(|s| s.name == export.name)
            .map(|s| self.info(s))
        else {
            return ReplyBody::error(format!("export {:?} was detached at once", export.name));
        };
        ReplyBody::Attached {
            uris: (self.uris)(&export.name),
            export: info,
        }
    }

    /// Why `volume` cannot be attached here as `name`, if it cannot.
    fn conflict(&self, name: &str, volume: &str) -> Option<String> {
        let volumes = self.known();
        if let Some((export, _)) = volumes.iter().find(|(_, v)| v.volume == volume) {
            return Some(format!(
                "{volume} is already attached here, as export {export:?}"
            ));
        }
        if volumes.contains_key(name) || self.server.exports().iter().any(|e| e.name == name) {
            return Some(format!(
                "export name {name:?} is in use; attach as VOLUME=OTHER_NAME"
            ));
        }
        None
    }

    async fn detach(&self, name: &str, force: bool) -> ReplyBody {
        // A re-encryption running stops after its step (resumable): it
        // holds the volume open until then.
        if let Some(job) = self.running_reencryption(name) {
            job.request_stop();
        }
        match self.server.detach(name, force).await {
            Ok(detached) => {
                self.known().remove(name);
                self.reencryptions
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(name);
                self.handles
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(name);
                tracing::info!(export = %name, forced = force, "detached");
                ReplyBody::Detached {
                    name: name.to_string(),
                    forced: detached.evicted,
                    clients_at_start: detached.clients_at_start,
                }
            }
            Err(e) => ReplyBody::error(e.to_string()),
        }
    }

    /// Grows the device of the export `volume` is attached as, on a
    /// blocking thread (it syncs the store twice). New handshakes see the
    /// new size at once (they ask the device); connections already in
    /// transmission keep the size they negotiated (NBD cannot tell them).
    async fn grow(&self, volume: &str, size: NewSize) -> ReplyBody {
        let Some((name, info)) = self.attached_as(volume) else {
            return ReplyBody::error(format!("{volume} is not attached to this server"));
        };
        let Some(export) = self.server.exports().into_iter().find(|e| e.name == name) else {
            return ReplyBody::error(format!("export {name:?} is being detached"));
        };
        let device = export.device;
        let grown = match tokio::task::spawn_blocking(move || device.grow(size)).await {
            Ok(Ok(grown)) => grown,
            Ok(Err(e)) => return ReplyBody::error(format!("{}: {e}", info.volume)),
            Err(e) => return ReplyBody::error(format!("{}: the grow failed: {e}", info.volume)),
        };
        if !grown.unchanged() {
            tracing::info!(
                export = %name,
                "grew {} from {} to {} bytes",
                info.volume,
                grown.old_size,
                grown.new_size
            );
        }
        ReplyBody::Grown {
            name,
            volume: info.volume,
            old_size: grown.old_size,
            new_size: grown.new_size,
            beyond_change_tracking: grown.beyond_change_tracking,
        }
    }

    /// The running re-encryption of export `name`, if one is.
    fn running_reencryption(&self, name: &str) -> Option<Arc<ReencryptionJob>> {
        self.reencryptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .filter(|job| job.is_running())
            .cloned()
    }

    /// Begins (or resumes) the re-encryption of the export `volume` is
    /// attached as, and runs it in a task of its own: the reply comes once
    /// it has begun; the caller follows it with `status`. A caller that
    /// goes away does not stop it (the server owns it; a detach does).
    async fn reencrypt(
        &self,
        volume: &str,
        new_key: Option<NewDataKey>,
        max_rate: Option<u64>,
    ) -> ReplyBody {
        let Some((name, info)) = self.attached_as(volume) else {
            return ReplyBody::error(format!("{volume} is not attached to this server"));
        };
        let Some(handle) = self
            .handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&name)
            .and_then(Weak::upgrade)
        else {
            return ReplyBody::error(format!("export {name:?} is being detached"));
        };
        if self
            .snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&name)
        {
            return ReplyBody::error(format!(
                "a snapshot of export {name:?} is being taken: re-encrypt once it is done"
            ));
        }
        let Some(_beginning) = Beginning::claim(&self.beginning, &name) else {
            return ReplyBody::error(format!(
                "a re-encryption of {} is being begun in this server: run the command again to follow it",
                info.volume
            ));
        };
        if let Some(job) = self.running_reencryption(&name) {
            if new_key.is_some() {
                return ReplyBody::error(format!(
                    "{} is already being re-encrypted in this server: `envol volume reencrypt {}` without --key follows it",
                    info.volume, info.volume
                ));
            }
            let (done, total) = job.bytes();
            return ReplyBody::ReencryptStarted {
                name,
                volume: info.volume,
                new_key_arn: job.new_key_arn().to_string(),
                resumed_at: done,
                total_bytes: total,
                already_running: true,
            };
        }
        let resumed_at = match self
            .attacher
            .begin_reencryption(&info.volume, &handle, new_key)
            .await
        {
            Ok(at) => at,
            Err(message) => return ReplyBody::error(message),
        };
        let sb = handle.superblock();
        let Some(t) = sb.transition.as_ref() else {
            return ReplyBody::error(format!("{}: the re-encryption did not begin", info.volume));
        };
        let total = sb.size;
        let job = Arc::new(ReencryptionJob::new(
            t.new_key_arn.clone(),
            resumed_at,
            total,
        ));
        self.reencryptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.clone(), job.clone());
        tracing::info!(
            export = %name,
            resumed_at,
            "re-encrypting {} under a new data key of {}",
            info.volume,
            t.new_key_arn
        );
        let run =
            self.attacher
                .run_reencryption(info.volume.clone(), handle, max_rate, job.clone());
        let volumes = self.volumes.clone();
        let (task_name, new_key_arn) = (name.clone(), t.new_key_arn.clone());
        tokio::spawn(async move {
            let result = run.await;
            match &result {
                Ok(()) => {
                    tracing::info!(export = %task_name, "re-encryption complete: the old data key is gone");
                    if let Some(v) = volumes
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get_mut(&task_name)
                    {
                        v.key_arn = new_key_arn;
                    }
                }
                Err(message) => tracing::warn!(export = %task_name, "{message}"),
            }
            job.finish(result);
        });
        ReplyBody::ReencryptStarted {
            name,
            volume: info.volume,
            new_key_arn: t.new_key_arn.clone(),
            resumed_at,
            total_bytes: total,
            already_running: false,
        }
    }

    /// The export a volume is attached as: by the name it was attached
    /// under, or, for a file, by the file it is (a path given relative to
    /// `serve`'s directory, or through a symbolic link, is the same file).
    fn attached_as(&self, volume: &str) -> Option<(String, VolumeInfo)> {
        let volumes = self.known();
        if let Some((name, info)) = volumes.iter().find(|(_, v)| v.volume == volume) {
            return Some((name.clone(), info.clone()));
        }
        let wanted = std::fs::canonicalize(volume).ok()?;
        volumes
            .iter()
            .find(|(_, v)| std::fs::canonicalize(&v.volume).ok().as_ref() == Some(&wanted))
            .map(|(name, info)| (name.clone(), info.clone()))
    }

    fn status(&self) -> Vec<ExportInfo> {
        self.server.status().iter().map(|s| self.info(s)).collect()
    }

    fn info(&self, s: &ExportStatus) -> ExportInfo {
        let volume = self.known().get(&s.name).cloned();
        let volume = volume.unwrap_or(VolumeInfo {
            volume: String::new(),
            volume_uuid: String::new(),
            key_arn: String::new(),
        });
        let c = &s.counters;
        ExportInfo {
            name: s.name.clone(),
            volume: volume.volume,
            volume_uuid: volume.volume_uuid,
            key_arn: volume.key_arn,
            size: s.size,
            read_only: s.read_only,
            state: match (s.evicting, s.detaching) {
                (true, _) => "evicting",
                (false, true) => "detaching",
                (false, false) => "attached",
            }
            .to_string(),
            clients: c.clients,
            in_flight: c.in_flight,
            bytes_read: c.bytes_read,
            bytes_written: c.bytes_written,
            attached_since: DateTime::<Utc>::from(c.attached_since)
                .to_rfc3339_opts(SecondsFormat::Secs, true),
            snapshot: self
                .snapshots
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&s.name)
                .map(|a| {
                    let usage = a.view.as_ref().map(|v| v.usage());
                    SnapshotSessionInfo {
                        base: a.base.clone(),
                        chunks_left: usage.map_or(0, |u| u.chunks_left),
                        copied_bytes: usage.map_or(0, |u| u.copied_bytes),
                    }
                }),
            reencryption: self
                .reencryptions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&s.name)
                .map(|job| Box::new(job.info())),
        }
    }
}
