//! The embedded durable store: SQLite in WAL mode, written by one thread that groups every
//! pending request into one transaction (group commit), so durability costs one fsync per batch,
//! not per message. Messages, executions, step runs, dead letters and trigger state (poll
//! cursors, last schedule runs) live in one file and change together, atomically.
//!
//! Why SQLite: one transaction can take a message off one queue, put its successors on the next
//! queues and record the step's run — the "write the output, then acknowledge the input" promise
//! in a single atomic commit — and the execution history stays queryable for `weft executions`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread;

use foldhash::HashMap;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

/// A message to add to a queue.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NewMessage {
    pub queue: String,
    pub execution: String,
    /// Unix milliseconds before which the message is not delivered (retries with backoff).
    pub visible_at: i64,
    pub attempt: u32,
    /// The envelope (context and routing), JSON.
    pub body: String,
    /// The envelope as it was before it was written into `body`: handed to a step worker in
    /// this process, it is not parsed again. Never stored.
    #[serde(skip)]
    pub parsed: Option<Arc<crate::engine::Envelope>>,
}

/// A message as stored.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub id: i64,
    pub queue: String,
    pub execution: String,
    pub visible_at: i64,
    pub attempt: u32,
    pub body: String,
    /// Times the process stopped while this message's step ran (see `inflight`).
    pub crashes: u32,
    /// The envelope, when this process enqueued the message (see [`NewMessage::parsed`]).
    pub parsed: Option<Arc<crate::engine::Envelope>>,
}

/// A step's run, for the execution history (already redacted).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StepRun {
    pub execution: String,
    pub step: String,
    pub attempt: u32,
    pub status: weft_plan::StepRunStatus,
    pub input: Option<String>,
    pub output: Option<String>,
    pub error: Option<String>,
    pub started_at: i64,
    pub duration_ms: i64,
}

/// A new execution.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NewExecution {
    pub id: String,
    pub instance: String,
    pub flow: String,
    pub trigger: String,
    pub started_at: i64,
}

/// One change; a request holds several, applied in order in one transaction.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Op {
    StartExecution(NewExecution),
    Enqueue(NewMessage),
    /// Acknowledge (delete) a delivered message.
    Ack(i64),
    /// Put a delivered message back with a later delivery time and a higher attempt.
    Reschedule {
        id: i64,
        visible_at: i64,
        attempt: u32,
    },
    DeadLetter {
        id: i64,
        step: String,
        error: String,
        at: i64,
        /// The body to keep instead of the message's (its secrets masked).
        body: Option<String>,
    },
    /// Record how many times the process stopped while a message's step ran.
    SetCrashes {
        id: i64,
        crashes: u32,
    },
    RecordStep(StepRun),
    /// Adjust an execution's count of messages in flight; at zero it is finished.
    Pending {
        execution: String,
        delta: i64,
        at: i64,
    },
    FailExecution {
        execution: String,
        error: String,
    },
    SetState {
        key: String,
        value: String,
    },
    /// Claims a key once: fails the whole request if it was claimed before (de-duplication).
    /// The claim remembers `at` (Unix ms) so that old claims can be pruned.
    Claim {
        key: String,
        at: i64,
    },
    /// Record a dead letter of a message that is not in this store (the broker backend's).
    RecordDeadLetter(DeadLetterRecord),
    /// Forget a claim (the broker backend, when what the claim guarded could not be published).
    Unclaim {
        key: String,
    },
    /// A dead letter was put back on its queue elsewhere (the broker backend): drop it and its
    /// replay request, and reopen its execution.
    Replayed {
        dead_letter: i64,
    },
    /// Move a dead letter back onto its queue.
    Replay {
        dead_letter: i64,
        at: i64,
    },
    /// Ask the running runtime to replay a dead letter (it applies [`Op::Replay`]).
    RequestReplay {
        dead_letter: i64,
    },
    /// Drop finished executions beyond the newest `keep`, and those started before `before`,
    /// oldest first and at most [`PRUNE_BATCH`] of them (see [`Committed::pruned`]); drop
    /// webhook-id claims made before `claims_before`.
    Prune {
        keep: i64,
        before: i64,
        claims_before: Option<i64>,
    },
    /// A sync webhook's reply from a `respond` step: released to the waiting caller once the
    /// request is committed (here, or by the gateway that keeps the history).
    Reply {
        execution: String,
        reply: crate::steps::Reply,
    },
}

/// A dead letter to record as is (see [`Op::RecordDeadLetter`]).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DeadLetterRecord {
    pub queue: String,
    pub execution: String,
    pub step: String,
    pub attempt: u32,
    pub body: String,
    pub error: String,
    pub at: i64,
}

/// What a committed request produced: the ids of the messages it enqueued, and more.
#[derive(Debug, Default)]
pub struct Committed {
    /// The ids of the messages the request enqueued, in order.
    pub enqueued: Vec<i64>,
    /// The messages themselves: moved to their queues after the commit, not copied.
    messages: Vec<StoredMessage>,
    /// Executions the request finished, with their status.
    pub finished: Vec<(String, String)>,
    /// Sync replies the request carried ([`Op::Reply`]), by execution.
    pub replies: Vec<(String, crate::steps::Reply)>,
    /// Executions an [`Op::Prune`] dropped: [`PRUNE_BATCH`] means more may be due.
    pub pruned: usize,
}

/// Executions one [`Op::Prune`] drops at most: a long history is pruned over several short
/// commits, never in one that holds the writer (and every caller waiting on it) for long.
pub const PRUNE_BATCH: usize = 500;

/// Why a commit or a read failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// An [`Op::Claim`] found its key claimed before: nothing of the request was applied.
    #[error("`{0}` was claimed before")]
    Duplicate(String),
    #[error("the store is closed")]
    Closed,
    #[error("opening {path}: {source}")]
    Open {
        path: String,
        source: Arc<rusqlite::Error>,
    },
    #[error("the store failed: {0}")]
    Sqlite(Arc<rusqlite::Error>),
    /// A commit was written but could not be made durable.
    #[error("the store failed: {0}")]
    Sync(String),
    /// The NATS JetStream broker failed (see [`crate::broker`]).
    #[error("the broker failed: {0}")]
    Broker(Arc<crate::broker::BrokerError>),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(Arc::new(e))
    }
}

/// A boxed commit future (the trait is object-safe).
pub type CommitFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Committed, StoreError>> + Send + 'a>>;

/// A commit that failed, with its ops handed back when they were not lost with the writer
/// (to retry without having copied them first).
pub type Failed = (StoreError, Option<Vec<Op>>);

/// A boxed [`Queue::commit_keeping`] future.
pub type KeepingFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Committed, Failed>> + Send + 'a>>;

type Reply = oneshot::Sender<Result<Committed, Failed>>;

struct Request {
    ops: Vec<Op>,
    reply: Reply,
}

impl Request {
    /// Answers with the commit's outcome. A committed request's sync replies move from its
    /// ops into the answer (its ops are not needed again, so they are not copied).
    fn answer(self, result: Result<Committed, StoreError>) {
        let result = match result {
            Ok(mut committed) => {
                for op in self.ops {
                    if let Op::Reply { execution, reply } = op {
                        committed.replies.push((execution, reply));
                    }
                }
                Ok(committed)
            }
            Err(e) => Err((e, Some(self.ops))),
        };
        let _ = self.reply.send(result);
    }

    /// Fails a request whose ops were applied (committed, but not known to be durable): they
    /// are not handed back, since applying them again would apply them twice.
    fn fail_applied(self, error: StoreError) {
        let _ = self.reply.send(Err((error, None)));
    }
}

/// The store stopped for good: a sync of its WAL failed after a commit (see `writer`).
#[derive(Default)]
struct Halt {
    error: OnceLock<StoreError>,
    notify: tokio::sync::Notify,
}

impl Halt {
    fn set(&self, error: StoreError) {
        let _ = self.error.set(error);
        self.notify.notify_waiters();
    }
}

/// What the engine needs from a durable queue. The embedded [`Store`] (SQLite) implements it;
/// so does [`crate::broker::JetStreamQueue`], which maps the queue operations onto NATS
/// JetStream: `Enqueue` → publish to the step's subject, `Ack` → ack, `Reschedule` → nak with a
/// delay, `DeadLetter` → record it in its local store, then terminate; history and trigger
/// state stay in a local [`Store`]. Where a backend cannot make a commit atomic, it publishes
/// successors before acknowledging, so a crash can only duplicate work in flight — never lose it.
pub trait Queue: Send + Sync + 'static {
    /// Applies `ops` durably; resolves once they survive a crash.
    /// A request holding a claimed [`Op::Claim`] fails whole with [`StoreError::Duplicate`].
    fn commit(&self, ops: Vec<Op>) -> CommitFuture<'_>;
    /// [`Queue::commit`], handing the ops back if it fails (by default, a copy kept for that).
    fn commit_keeping(&self, ops: Vec<Op>) -> KeepingFuture<'_> {
        let copy = ops.clone();
        let commit = self.commit(ops);
        Box::pin(async move { commit.await.map_err(|e| (e, Some(copy))) })
    }
    /// Messages waiting at start (what was in flight at the last stop).
    fn pending_messages(&self) -> Result<Vec<StoredMessage>, StoreError>;
    /// Trigger state: poll cursors, last schedule runs, deploy hashes.
    fn state(&self, key: &str) -> Result<Option<String>, StoreError>;
    /// Dead letters whose replay was requested.
    fn replay_requests(&self) -> Result<Vec<i64>, StoreError>;
    /// Why the queue stopped taking commits for good, if it has (a failed sync).
    fn halted(&self) -> Option<StoreError> {
        None
    }
    /// Resolves when the queue stops taking commits for good, with why.
    fn until_halted(&self) -> HaltFuture<'_> {
        Box::pin(std::future::pending())
    }
}

/// See [`Queue::until_halted`].
pub type HaltFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = StoreError> + Send + 'a>>;

impl Queue for Store {
    fn commit(&self, ops: Vec<Op>) -> CommitFuture<'_> {
        Box::pin(Store::commit(self, ops))
    }
    fn commit_keeping(&self, ops: Vec<Op>) -> KeepingFuture<'_> {
        Box::pin(Store::commit_keeping(self, ops))
    }
    fn pending_messages(&self) -> Result<Vec<StoredMessage>, StoreError> {
        Store::pending_messages(self)
    }
    fn state(&self, key: &str) -> Result<Option<String>, StoreError> {
        Store::state(self, key)
    }
    fn replay_requests(&self) -> Result<Vec<i64>, StoreError> {
        Store::replay_requests(self)
    }
    fn halted(&self) -> Option<StoreError> {
        self.halt.error.get().cloned()
    }
    fn until_halted(&self) -> HaltFuture<'_> {
        Box::pin(async move {
            loop {
                let notified = self.halt.notify.notified();
                if let Some(e) = self.halt.error.get() {
                    return e.clone();
                }
                notified.await;
            }
        })
    }
}

/// Called on the writer thread once each commit is durable, with everything it enqueued.
pub type OnCommit = Box<dyn Fn(Vec<StoredMessage>) + Send + 'static>;

/// Handle to the store: writes go to the writer thread; reads open their own connection.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Request>,
    /// One read connection, reused (WAL lets it read while the writer writes).
    read: Arc<Mutex<Connection>>,
    halt: Arc<Halt>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    execution TEXT NOT NULL,
    visible_at INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    body TEXT NOT NULL,
    crashes INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS executions (
    id TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    flow TEXT NOT NULL,
    status TEXT NOT NULL,
    pending INTEGER NOT NULL DEFAULT 0,
    trigger TEXT,
    error TEXT,
    started_at INTEGER NOT NULL,
    finished_at INTEGER,
    opening_runs TEXT,
    closing_runs TEXT
);
CREATE TABLE IF NOT EXISTS step_runs (
    id INTEGER PRIMARY KEY,
    execution TEXT NOT NULL,
    step TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    status TEXT NOT NULL,
    input TEXT,
    output TEXT,
    error TEXT,
    started_at INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS step_runs_execution ON step_runs(execution);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    execution TEXT NOT NULL,
    step TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    body TEXT NOT NULL,
    error TEXT NOT NULL,
    failed_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS replay_requests (
    dead_letter INTEGER PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // NORMAL: a commit writes the WAL without syncing it; the writer syncs it right after (one
    // `fdatasync` per group commit) and only then dispatches and answers, so an acknowledged
    // write survives power loss as with FULL (see `writer`). Every other connection keeps
    // NORMAL's consistency.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    Ok(conn)
}

/// Stores created before ids were never reused: their `messages` and `dead_letters` tables
/// are rebuilt with `AUTOINCREMENT` (so an id named to `weft dlq replay` is never another
/// message's) and `messages` gains its `crashes` count. Stores created before executions held
/// step runs gain the two columns that hold them.
fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let sql_of = |conn: &Connection, table: &str| -> rusqlite::Result<Option<String>> {
        conn.query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get(0),
        )
        .optional()
    };
    let tx = conn.transaction()?;
    for (table, columns) in [
        (
            "messages",
            "id, queue, execution, visible_at, attempt, body",
        ),
        (
            "dead_letters",
            "id, queue, execution, step, attempt, body, error, failed_at",
        ),
    ] {
        let Some(sql) = sql_of(&tx, table)? else {
            continue; // a new store
        };
        if sql.contains("AUTOINCREMENT") {
            continue;
        }
        tx.execute_batch(&format!(
            "ALTER TABLE {table} RENAME TO {table}_before_migration"
        ))?;
        tx.execute_batch(SCHEMA)?;
        tx.execute_batch(&format!(
            "INSERT INTO {table} ({columns}) SELECT {columns} FROM {table}_before_migration;
             DROP TABLE {table}_before_migration;"
        ))?;
    }
    // Executions hold the step runs of the commits that start and finish them (see `Held`).
    if sql_of(&tx, "executions")?.is_some_and(|sql| !sql.contains("opening_runs")) {
        tx.execute_batch(
            "ALTER TABLE executions ADD COLUMN opening_runs TEXT;
             ALTER TABLE executions ADD COLUMN closing_runs TEXT;",
        )?;
    }
    tx.commit()
}

impl Store {
    /// Opens (or creates) the store and starts its writer thread.
    pub fn open(path: &Path, on_commit: OnCommit) -> Result<Store, StoreError> {
        Store::open_with(path, on_commit, None)
    }

    /// Opens the store; past `max_bytes`, commits fail as on a full disk.
    pub fn open_with(
        path: &Path,
        on_commit: OnCommit,
        max_bytes: Option<u64>,
    ) -> Result<Store, StoreError> {
        let open_error = |e: rusqlite::Error| StoreError::Open {
            path: path.display().to_string(),
            source: Arc::new(e),
        };
        let mut conn = open(path).map_err(open_error)?;
        migrate(&mut conn).map_err(open_error)?;
        conn.execute_batch(SCHEMA).map_err(open_error)?;
        // Executions are listed and pruned newest first by rowid, the order they started in:
        // an index on their start time was one more B-tree written per event.
        conn.execute_batch("DROP INDEX IF EXISTS executions_started")
            .map_err(open_error)?;
        if let Some(max) = max_bytes {
            let page: i64 = conn
                .pragma_query_value(None, "page_size", |r| r.get(0))
                .map_err(open_error)?;
            let pages = i64::try_from(max).unwrap_or(i64::MAX) / page.max(1);
            conn.pragma_update(None, "max_page_count", pages.max(1))
                .map_err(open_error)?;
        }
        let wal = PathBuf::from(format!("{}-wal", conn.path().unwrap_or_default()));
        let (tx, rx) = mpsc::channel::<Request>();
        let halt = Arc::new(Halt::default());
        let halted = halt.clone();
        thread::Builder::new()
            .name("weft-store-writer".into())
            .spawn(move || writer(conn, rx, wal, on_commit, &halted))
            .map_err(|_| StoreError::Closed)?;
        let read = open(path).map_err(open_error)?;
        Ok(Store {
            tx,
            read: Arc::new(Mutex::new(read)),
            halt,
        })
    }

    /// Applies `ops` in one transaction (grouped with concurrent requests); returns once durable.
    pub async fn commit(&self, ops: Vec<Op>) -> Result<Committed, StoreError> {
        self.commit_keeping(ops).await.map_err(|(e, _)| e)
    }

    /// [`Store::commit`], handing the ops back if it fails.
    pub async fn commit_keeping(&self, ops: Vec<Op>) -> Result<Committed, Failed> {
        if let Some(e) = self.halt.error.get() {
            // Halted for good: retrying cannot help.
            return Err((e.clone(), None));
        }
        let (reply, rx) = oneshot::channel();
        if let Err(mpsc::SendError(request)) = self.tx.send(Request { ops, reply }) {
            return Err((StoreError::Closed, Some(request.ops)));
        }
        rx.await.map_err(|_| (StoreError::Closed, None))?
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while reading leaves the connection usable: take it back.
        self.read.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every message waiting in the store (at start: what was in flight at the last stop).
    pub fn pending_messages(&self) -> Result<Vec<StoredMessage>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare(
                        "SELECT id, queue, execution, visible_at, attempt, body, crashes FROM messages ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(StoredMessage {
                id: r.get(0)?,
                queue: r.get(1)?,
                execution: r.get(2)?,
                visible_at: r.get(3)?,
                attempt: r.get(4)?,
                body: r.get(5)?,
                crashes: r.get(6)?,
                parsed: None,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Dead letters whose replay was requested (by `weft dlq replay`, possibly from another process).
    pub fn replay_requests(&self) -> Result<Vec<i64>, StoreError> {
        let conn = self.reader();
        let mut stmt =
            conn.prepare_cached("SELECT dead_letter FROM replay_requests ORDER BY dead_letter")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A dead letter's queue, execution and body.
    pub fn dead_letter(&self, id: i64) -> Result<Option<(String, String, String)>, StoreError> {
        let conn = self.reader();
        Ok(conn
            .query_row(
                "SELECT queue, execution, body FROM dead_letters WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?)
    }

    pub fn state(&self, key: &str) -> Result<Option<String>, StoreError> {
        let conn = self.reader();
        Ok(conn
            .query_row("SELECT value FROM state WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?)
    }
}

/// The writer thread. A failed sync of the WAL after a commit stops it for good, as databases
/// do after a failed `fsync`: the kernel may have dropped the pages it could not write, so a
/// later sync that succeeds would not make them durable. The requests of that commit fail
/// without their ops (applied once, they must not be applied again); every later commit fails
/// at once ([`Queue::halted`]); the runtime stops, and at the next start SQLite recovers what
/// is durable — what was in flight runs again.
fn writer(
    conn: Connection,
    rx: mpsc::Receiver<Request>,
    wal: PathBuf,
    on_commit: OnCommit,
    halt: &Halt,
) {
    const MAX_BATCH: usize = 4096;
    let mut wal = Wal::new(wal);
    let mut state = match WriterState::new(&conn) {
        Ok(state) => state,
        Err(e) => {
            // The schema was just made; a statement that does not prepare is a broken store.
            let error = StoreError::from(e);
            tracing::error!("the store's writer cannot start: {error}");
            halt.set(error.clone());
            for req in rx {
                req.answer(Err(error.clone()));
            }
            return;
        }
    };
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let results = apply_batch(&conn, &batch, &mut state);
        match results {
            Ok(mut per_request) => {
                // Durable first: only then do the enqueued messages go to their workers (a
                // step's side effect never comes before its caller could hear back), and the
                // requests get their answers.
                match wal.sync() {
                    Ok(()) => {
                        on_commit(
                            per_request
                                .iter_mut()
                                .flat_map(|c| std::mem::take(&mut c.messages))
                                .collect(),
                        );
                        for (req, committed) in batch.into_iter().zip(per_request) {
                            req.answer(Ok(committed));
                        }
                    }
                    Err(e) => {
                        stop_after_failed_sync(batch, e, halt);
                        return;
                    }
                }
            }
            Err(_) if batch.len() > 1 => {
                // One bad request must not fail its neighbours: retry each on its own.
                let mut requests = batch.into_iter();
                while let Some(req) = requests.next() {
                    match apply_batch(&conn, std::slice::from_ref(&req), &mut state) {
                        Ok(mut c) => {
                            let mut committed = c.pop().unwrap_or_default();
                            if let Err(e) = wal.sync() {
                                stop_after_failed_sync(std::iter::once(req), e.clone(), halt);
                                for req in requests {
                                    req.answer(Err(e.clone()));
                                }
                                return;
                            }
                            on_commit(std::mem::take(&mut committed.messages));
                            req.answer(Ok(committed));
                        }
                        Err(e) => req.answer(Err(e)),
                    }
                }
            }
            Err(e) => {
                for req in batch {
                    req.answer(Err(e.clone()));
                }
            }
        }
    }
}

/// Fails the requests of a commit whose sync failed, and halts the store (see [`writer`]).
fn stop_after_failed_sync(
    applied: impl IntoIterator<Item = Request>,
    error: StoreError,
    halt: &Halt,
) {
    tracing::error!(
        "{error}: the store stops taking writes; what it acknowledged before is durable, and \
         what was in flight runs again at the next start"
    );
    // Halted before anyone hears back: a caller that sees the error also sees the halt.
    halt.set(error.clone());
    for req in applied {
        req.fail_applied(error.clone());
    }
}

/// The store's write-ahead log, synced by the writer after each commit (see [`open`]).
struct Wal {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl Wal {
    fn new(path: PathBuf) -> Wal {
        Wal { path, file: None }
    }

    /// `fdatasync`: every commit written so far survives power loss once this returns.
    fn sync(&mut self) -> Result<(), StoreError> {
        let synced = match &self.file {
            Some(file) => file.sync_data(),
            None => std::fs::File::open(&self.path).and_then(|file| {
                let synced = file.sync_data();
                self.file = Some(file);
                synced
            }),
        };
        synced.map_err(|e| {
            // Opened again at the next sync.
            self.file = None;
            StoreError::Sync(format!("syncing {}: {e}", self.path.display()))
        })
    }
}

/// The pending counts of the executions this writer started and that are still running, as
/// their rows hold them: the update that counts a message down needs no read first. Only the
/// writer changes these rows; anything that changes them otherwise (a failure, a replay, a
/// prune) or a batch rolled back empties it, and a count not here is read from the row.
#[derive(Default)]
struct OpenExecutions {
    /// Execution id → (rowid, pending count).
    rows: HashMap<String, (i64, i64)>,
}

impl OpenExecutions {
    /// Executions that never finish (their message waits out a long retry, or is stuck) would
    /// otherwise accumulate.
    const MAX: usize = 65_536;

    fn insert(&mut self, execution: &str, rowid: i64, pending: i64) {
        if self.rows.len() >= Self::MAX {
            self.rows.clear();
        }
        self.rows.insert(execution.to_string(), (rowid, pending));
    }
}

/// What the writer keeps from one batch to the next: the statements every event runs, prepared
/// once (rather than looked up by their text in rusqlite's cache each time), and the pending
/// counts of the executions it started.
struct WriterState<'c> {
    open: OpenExecutions,
    insert_execution: rusqlite::Statement<'c>,
    count_down: rusqlite::Statement<'c>,
    count_down_closing: rusqlite::Statement<'c>,
    enqueue: rusqlite::Statement<'c>,
    ack: rusqlite::Statement<'c>,
}

impl<'c> WriterState<'c> {
    fn new(conn: &'c Connection) -> rusqlite::Result<WriterState<'c>> {
        Ok(WriterState {
            open: OpenExecutions::default(),
            insert_execution: conn.prepare(INSERT_EXECUTION)?,
            count_down: conn.prepare(COUNT_DOWN)?,
            count_down_closing: conn.prepare(COUNT_DOWN_CLOSING)?,
            enqueue: conn.prepare(ENQUEUE)?,
            ack: conn.prepare(ACK)?,
        })
    }
}

const INSERT_EXECUTION: &str = "INSERT OR IGNORE INTO executions (id, instance, flow, status, pending, trigger, started_at, finished_at, opening_runs)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";
const COUNT_DOWN: &str =
    "UPDATE executions SET pending = ?2, status = ?3, finished_at = ?4 WHERE rowid = ?1";
const COUNT_DOWN_CLOSING: &str = "UPDATE executions SET pending = ?2, status = ?3, finished_at = ?4, closing_runs = ?5 WHERE rowid = ?1";
const ENQUEUE: &str = "INSERT INTO messages (queue, execution, visible_at, attempt, body) VALUES (?1, ?2, ?3, ?4, ?5)";
const ACK: &str = "DELETE FROM messages WHERE id = ?1";

fn apply_batch(
    conn: &Connection,
    batch: &[Request],
    state: &mut WriterState<'_>,
) -> Result<Vec<Committed>, StoreError> {
    let applied = apply_in_transaction(conn, batch, state);
    if applied.is_err() {
        // Rolled back: what the batch counted did not happen.
        state.open.rows.clear();
    }
    applied
}

fn apply_in_transaction(
    conn: &Connection,
    batch: &[Request],
    state: &mut WriterState<'_>,
) -> Result<Vec<Committed>, StoreError> {
    // The writer's connection is used by nothing else, and the held statements borrow it.
    let tx = conn.unchecked_transaction()?;
    let mut out = Vec::with_capacity(batch.len());
    for req in batch {
        let mut committed = Committed::default();
        let started = started_with_pending(&req.ops);
        let mut held = Held::of(&req.ops);
        for op in &req.ops {
            match op {
                Op::StartExecution(e) if started.contains_key(e.id.as_str()) => {
                    let runs = held.take(&e.id);
                    start_with_pending(
                        &tx,
                        e,
                        started[e.id.as_str()],
                        runs,
                        state,
                        &mut committed,
                    )?;
                }
                Op::Pending { execution, .. } if started.contains_key(execution.as_str()) => {}
                Op::RecordStep(run) if held.holds(&run.execution) => {}
                Op::Pending {
                    execution,
                    delta,
                    at,
                } => {
                    let runs = held.take(execution);
                    pending(&tx, execution, *delta, *at, runs, state, &mut committed)?;
                }
                _ => apply(&tx, op, state, &mut committed)?,
            }
        }
        out.push(committed);
    }
    tx.commit()?;
    Ok(out)
}

/// A request's step runs, held back until the statement that writes their execution's row
/// anyway: its insert, or the update of its pending count. When that statement starts or
/// finishes the execution, the runs go into the row itself (`opening_runs`, `closing_runs`:
/// one JSON array each), so the commonest execution — started by one commit, finished by the
/// next — writes its history in two statements, not one per step more. Runs of a commit that
/// does neither are rows of `step_runs`. Only runs whose execution has a pending count in
/// the request are held (every other is written where it comes).
struct Held<'o> {
    runs: HashMap<&'o str, Vec<&'o StepRun>>,
}

impl<'o> Held<'o> {
    fn of(ops: &'o [Op]) -> Held<'o> {
        let mut runs: HashMap<&'o str, Vec<&'o StepRun>> = HashMap::default();
        for op in ops {
            if let Op::Pending { execution, .. } = op {
                runs.entry(execution).or_default();
            }
        }
        if !runs.is_empty() {
            for op in ops {
                if let Op::RecordStep(run) = op
                    && let Some(held) = runs.get_mut(run.execution.as_str())
                {
                    held.push(run);
                }
            }
        }
        Held { runs }
    }

    fn holds(&self, execution: &str) -> bool {
        self.runs.contains_key(execution)
    }

    /// The runs held for `execution`, once (later calls get none).
    fn take(&mut self, execution: &str) -> Vec<&'o StepRun> {
        self.runs
            .get_mut(execution)
            .map(std::mem::take)
            .unwrap_or_default()
    }
}

/// Step runs as one JSON array of the records `weft executions show` prints; their input and
/// output are spliced in as the JSON text they already are. `None` for no runs.
fn runs_json(runs: &[&StepRun]) -> Option<String> {
    use std::fmt::Write as _;
    if runs.is_empty() {
        return None;
    }
    let text = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut out = String::with_capacity(
        runs.iter()
            .map(|r| {
                r.input.as_ref().map_or(4, String::len)
                    + r.output.as_ref().map_or(4, String::len)
                    + r.error.as_ref().map_or(4, String::len)
                    + 128
            })
            .sum(),
    );
    out.push('[');
    for (i, r) in runs.iter().enumerate() {
        out.push_str(if i == 0 { "{\"step\":" } else { ",{\"step\":" });
        out.push_str(&text(&r.step));
        let _ = write!(out, ",\"attempt\":{},\"status\":\"", r.attempt);
        out.push_str(r.status.as_str());
        out.push_str("\",\"input\":");
        out.push_str(r.input.as_deref().unwrap_or("null"));
        out.push_str(",\"output\":");
        out.push_str(r.output.as_deref().unwrap_or("null"));
        out.push_str(",\"error\":");
        match &r.error {
            Some(error) => out.push_str(&text(error)),
            None => out.push_str("null"),
        }
        let _ = write!(
            out,
            ",\"started_at\":{},\"duration_ms\":{}}}",
            r.started_at, r.duration_ms
        );
    }
    out.push(']');
    Some(out)
}

/// Step runs as rows of `step_runs`, one each.
fn insert_runs(tx: &rusqlite::Transaction<'_>, runs: &[&StepRun]) -> rusqlite::Result<()> {
    for s in runs {
        tx.prepare_cached(
            "INSERT INTO step_runs (execution, step, attempt, status, input, output, error, started_at, duration_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?
        .execute(params![
            s.execution, s.step, s.attempt, s.status.as_str(), s.input, s.output, s.error, s.started_at, s.duration_ms
        ])?;
    }
    Ok(())
}

/// The executions a request starts, with the sum of the request's pending counts for each
/// (and when it is last set): they are inserted with that count, one statement instead of an
/// insert and an update. An execution the request also fails is left to the ops in order.
fn started_with_pending(ops: &[Op]) -> HashMap<&str, (i64, i64)> {
    let mut started: HashMap<&str, Option<(i64, i64)>> = ops
        .iter()
        .filter_map(|op| match op {
            Op::StartExecution(e) => Some((e.id.as_str(), None)),
            _ => None,
        })
        .collect();
    if started.is_empty() {
        return HashMap::default();
    }
    for op in ops {
        match op {
            Op::Pending {
                execution,
                delta,
                at,
            } => {
                if let Some(count) = started.get_mut(execution.as_str()) {
                    let sum = count.map_or(0, |(sum, _)| sum) + delta;
                    *count = Some((sum, *at));
                }
            }
            Op::FailExecution { execution, .. } => {
                started.remove(execution.as_str());
            }
            _ => {}
        }
    }
    // An execution with no pending count in the request keeps the ops in order.
    started
        .into_iter()
        .filter_map(|(id, count)| Some((id, count?)))
        .collect()
}

/// Inserts a new execution with its pending count; one with nothing pending is finished at
/// once. An execution already there (a request applied again) gets the count as an update.
fn start_with_pending(
    tx: &rusqlite::Transaction<'_>,
    e: &NewExecution,
    (pending, at): (i64, i64),
    runs: Vec<&StepRun>,
    state: &mut WriterState<'_>,
    committed: &mut Committed,
) -> rusqlite::Result<()> {
    let done = pending <= 0;
    let inserted = state.insert_execution.execute(params![
        e.id,
        e.instance,
        e.flow,
        if done { "succeeded" } else { "running" },
        pending,
        e.trigger,
        e.started_at,
        done.then_some(at),
        runs_json(&runs)
    ])?;
    if inserted == 0 {
        return self::pending(tx, &e.id, pending, at, runs, state, committed);
    }
    if done {
        committed
            .finished
            .push((e.id.clone(), "succeeded".to_string()));
    } else {
        state.open.insert(&e.id, tx.last_insert_rowid(), pending);
    }
    Ok(())
}

/// Applies one op inside the batch's transaction.
fn apply(
    tx: &rusqlite::Transaction<'_>,
    op: &Op,
    state: &mut WriterState<'_>,
    committed: &mut Committed,
) -> Result<(), StoreError> {
    if matches!(
        op,
        Op::FailExecution { .. } | Op::Prune { .. } | Op::Replayed { .. } | Op::Replay { .. }
    ) {
        // These change executions' rows (their status, or whether they are there at all).
        state.open.rows.clear();
    }
    match op {
        Op::Pending {
            execution,
            delta,
            at,
        } => pending(tx, execution, *delta, *at, Vec::new(), state, committed)?,
        Op::StartExecution(_) | Op::FailExecution { .. } | Op::RecordStep(_) | Op::Prune { .. } => {
            apply_history(tx, op, committed)?
        }
        // Handed to the caller with the commit's answer (`Request::answer`).
        Op::Reply { .. } => {}
        Op::SetState { key, value } => {
            tx.prepare_cached("INSERT INTO state (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value")?
                .execute(params![key, value])?;
        }
        Op::Claim { key, at } => {
            let inserted = tx
                .prepare_cached("INSERT OR IGNORE INTO state (key, value) VALUES (?1, ?2)")?
                .execute(params![key, at.to_string()])?;
            if inserted == 0 {
                return Err(StoreError::Duplicate(key.clone()));
            }
        }
        Op::Unclaim { key } => {
            tx.prepare_cached("DELETE FROM state WHERE key = ?1")?
                .execute([key])?;
        }
        Op::RecordDeadLetter(d) => {
            tx.prepare_cached(
                "INSERT INTO dead_letters (queue, execution, step, attempt, body, error, failed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                d.queue,
                d.execution,
                d.step,
                d.attempt,
                d.body,
                d.error,
                d.at
            ])?;
        }
        Op::Replayed { dead_letter } => reopen(tx, *dead_letter)?,
        _ => apply_queue(tx, op, state, committed)?,
    }
    Ok(())
}

/// Ops on queues: enqueue, ack, reschedule, dead-letter, replay.
fn apply_queue(
    tx: &rusqlite::Transaction<'_>,
    op: &Op,
    state: &mut WriterState<'_>,
    committed: &mut Committed,
) -> rusqlite::Result<()> {
    match op {
        Op::Enqueue(m) => {
            state.enqueue.execute(params![
                m.queue,
                m.execution,
                m.visible_at,
                m.attempt,
                m.body
            ])?;
            let id = tx.last_insert_rowid();
            committed.enqueued.push(id);
            committed.messages.push(StoredMessage {
                id,
                queue: m.queue.clone(),
                execution: m.execution.clone(),
                visible_at: m.visible_at,
                attempt: m.attempt,
                body: m.body.clone(),
                crashes: 0,
                parsed: m.parsed.clone(),
            });
        }
        Op::SetCrashes { id, crashes } => {
            tx.prepare_cached("UPDATE messages SET crashes = ?2 WHERE id = ?1")?
                .execute(params![id, crashes])?;
        }
        Op::Ack(id) => {
            state.ack.execute([id])?;
        }
        Op::Reschedule {
            id,
            visible_at,
            attempt,
        } => {
            let row: Option<(String, String, String, u32)> = tx
                .prepare_cached(
                    "SELECT queue, execution, body, crashes FROM messages WHERE id = ?1",
                )?
                .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .optional()?;
            tx.prepare_cached("UPDATE messages SET visible_at = ?2, attempt = ?3 WHERE id = ?1")?
                .execute(params![id, visible_at, attempt])?;
            if let Some((queue, execution, body, crashes)) = row {
                committed.enqueued.push(*id);
                committed.messages.push(StoredMessage {
                    id: *id,
                    queue,
                    execution,
                    visible_at: *visible_at,
                    attempt: *attempt,
                    body,
                    crashes,
                    parsed: None,
                });
            }
        }
        Op::DeadLetter {
            id,
            step,
            error,
            at,
            body,
        } => {
            tx.prepare_cached(
                "INSERT INTO dead_letters (queue, execution, step, attempt, body, error, failed_at)
                 SELECT queue, execution, ?2, attempt, COALESCE(?5, body), ?3, ?4 FROM messages WHERE id = ?1",
            )?
            .execute(params![id, step, error, at, body])?;
            state.ack.execute([id])?;
        }
        Op::RequestReplay { dead_letter } => {
            tx.prepare_cached("INSERT OR IGNORE INTO replay_requests (dead_letter) SELECT id FROM dead_letters WHERE id = ?1")?
                .execute([dead_letter])?;
        }
        Op::Replay { dead_letter, at } => replay(tx, *dead_letter, *at, state, committed)?,
        _ => unreachable!("apply routes only queue ops here"),
    }
    Ok(())
}

/// Moves a dead letter back onto its queue and reopens its execution.
fn replay(
    tx: &rusqlite::Transaction<'_>,
    dead_letter: i64,
    at: i64,
    state: &mut WriterState<'_>,
    committed: &mut Committed,
) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM replay_requests WHERE dead_letter = ?1")?
        .execute([dead_letter])?;
    let row: Option<(String, String, String)> = tx
        .prepare_cached("SELECT queue, execution, body FROM dead_letters WHERE id = ?1")?
        .query_row([dead_letter], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((queue, execution, body)) = row else {
        return Ok(());
    };
    let message = NewMessage {
        queue,
        execution: execution.clone(),
        visible_at: at,
        attempt: 1,
        body,
        parsed: None,
    };
    apply_queue(tx, &Op::Enqueue(message), state, committed)?;
    reopen(tx, dead_letter)
}

/// Drops a replayed dead letter and reopens its execution.
fn reopen(tx: &rusqlite::Transaction<'_>, dead_letter: i64) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM replay_requests WHERE dead_letter = ?1")?
        .execute([dead_letter])?;
    let execution: Option<String> = tx
        .prepare_cached("SELECT execution FROM dead_letters WHERE id = ?1")?
        .query_row([dead_letter], |r| r.get(0))
        .optional()?;
    let Some(execution) = execution else {
        return Ok(());
    };
    tx.prepare_cached("DELETE FROM dead_letters WHERE id = ?1")?
        .execute([dead_letter])?;
    tx.prepare_cached(
        "UPDATE executions SET status = 'running', pending = pending + 1, finished_at = NULL, error = NULL WHERE id = ?1",
    )?
    .execute([&execution])?;
    Ok(())
}

/// Drops up to [`PRUNE_BATCH`] finished executions, oldest first, that are past the newest
/// `keep` or started before `before`, with their step runs; returns how many. Rowids are in
/// start order, so the scan reads from the oldest and stops at the first execution to keep;
/// each execution's step runs are found by their index, not by a scan.
fn prune_history(
    tx: &rusqlite::Transaction<'_>,
    keep: i64,
    before: i64,
) -> rusqlite::Result<usize> {
    // Rowids are dense at the new end (only the old end is ever deleted): the newest `keep`
    // are those above the newest rowid less `keep`.
    let newest: Option<i64> = tx
        .prepare_cached("SELECT max(rowid) FROM executions")?
        .query_row([], |r| r.get(0))?;
    let newest_pruned = newest.map_or(0, |n| n - keep);
    let mut doomed: Vec<(i64, String)> = Vec::new();
    {
        let mut stmt = tx.prepare_cached(
            "SELECT rowid, id, started_at, finished_at IS NOT NULL FROM executions ORDER BY rowid",
        )?;
        let mut rows = stmt.query([])?;
        // Unfinished executions stay; the scan past them is bounded too.
        let mut scanned = 0;
        while let Some(row) = rows.next()? {
            let rowid: i64 = row.get(0)?;
            if rowid > newest_pruned && row.get::<_, i64>(2)? >= before {
                break;
            }
            if row.get(3)? {
                doomed.push((rowid, row.get(1)?));
                if doomed.len() == PRUNE_BATCH {
                    break;
                }
            }
            scanned += 1;
            if scanned == 4 * PRUNE_BATCH {
                break;
            }
        }
    }
    for (rowid, id) in &doomed {
        tx.prepare_cached("DELETE FROM step_runs WHERE execution = ?1")?
            .execute([id])?;
        tx.prepare_cached("DELETE FROM executions WHERE rowid = ?1")?
            .execute([rowid])?;
    }
    Ok(doomed.len())
}

/// Adds `delta` to an execution's count of messages in flight; at zero it is finished, and
/// `runs` (step runs of the same request) go into its row's `closing_runs` with the same
/// update. Otherwise they are rows of `step_runs`.
fn pending(
    tx: &rusqlite::Transaction<'_>,
    execution: &str,
    delta: i64,
    at: i64,
    runs: Vec<&StepRun>,
    state: &mut WriterState<'_>,
    committed: &mut Committed,
) -> rusqlite::Result<()> {
    let open = &mut state.open;
    // Read (unless the writer holds the count), then write by rowid: the same as one
    // `UPDATE … RETURNING`, at about half its cost (RETURNING goes through a temporary table).
    let row: Option<(i64, i64, String, Option<i64>, bool)> = match open.rows.get(execution) {
        Some(&(rowid, pending)) => Some((rowid, pending, "running".to_string(), None, false)),
        None => tx
            .prepare_cached(
                "SELECT rowid, pending, status, finished_at, closing_runs IS NOT NULL FROM executions WHERE id = ?1",
            )?
            .query_row([execution], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()?,
    };
    let Some((rowid, pending, status, finished_at, closed_before)) = row else {
        return insert_runs(tx, &runs);
    };
    let pending = pending + delta;
    if pending <= 0 || finished_at.is_some() {
        open.rows.remove(execution);
    } else if let Some(count) = open.rows.get_mut(execution) {
        count.1 = pending;
    }
    // At zero the execution is finished: succeeded unless it failed already.
    let finishing = pending <= 0 && finished_at.is_none();
    let status = if finishing && status == "running" {
        "succeeded".to_string()
    } else {
        status
    };
    let finished_at = if finishing { Some(at) } else { finished_at };
    // A replayed execution finishing again keeps its first closing runs; these are rows.
    if finishing && !closed_before && !runs.is_empty() {
        state.count_down_closing.execute(params![
            rowid,
            pending,
            status,
            finished_at,
            runs_json(&runs)
        ])?;
    } else {
        state
            .count_down
            .execute(params![rowid, pending, status, finished_at])?;
        insert_runs(tx, &runs)?;
    }
    if finishing {
        committed.finished.push((execution.to_string(), status));
    }
    Ok(())
}

/// Ops on the execution history: executions, step runs, failures, pruning.
fn apply_history(
    tx: &rusqlite::Transaction<'_>,
    op: &Op,
    committed: &mut Committed,
) -> rusqlite::Result<()> {
    match op {
        Op::StartExecution(e) => {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO executions (id, instance, flow, status, pending, trigger, started_at) VALUES (?1, ?2, ?3, 'running', 0, ?4, ?5)",
            )?
            .execute(params![e.id, e.instance, e.flow, e.trigger, e.started_at])?;
        }
        Op::RecordStep(run) => insert_runs(tx, &[run])?,
        Op::FailExecution { execution, error } => {
            tx.prepare_cached("UPDATE executions SET status = 'failed', error = ?2 WHERE id = ?1")?
                .execute(params![execution, error])?;
        }
        Op::Prune {
            keep,
            before,
            claims_before,
        } => {
            // Claims older than the replay tolerance can no longer be replayed validly.
            if let Some(claims_before) = claims_before {
                tx.execute(
                    "DELETE FROM state WHERE key LIKE 'webhook-id:%' AND CAST(value AS INTEGER) < ?1",
                    [claims_before],
                )?;
            }
            committed.pruned += prune_history(tx, *keep, *before)?;
        }
        _ => unreachable!("apply routes only history ops here"),
    }
    Ok(())
}
