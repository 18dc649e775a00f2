//! The schema, as a list of migrations: `PRAGMA user_version` is the number of them applied.
//! A migration is only ever appended, never edited: a database at version N is brought to the
//! newest by applying the ones after N, each in its own transaction.

/// The newest schema version this build writes and reads.
pub const LATEST: i64 = MIGRATIONS.len() as i64;

/// Payloads whose JSON text is longer than this are stored once in `blobs`, by hash.
pub const BLOB_THRESHOLD: usize = 4096;

/// Migration `i` brings a database from version `i` to `i + 1`.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: the tables.
    "
    CREATE TABLE blobs (
        hash TEXT PRIMARY KEY,        -- sha256 of data, hex
        size INTEGER NOT NULL,        -- bytes of data
        data TEXT NOT NULL            -- the JSON text
    ) WITHOUT ROWID;
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        agent TEXT NOT NULL,
        kind TEXT NOT NULL,
        config_hash TEXT NOT NULL,
        status TEXT NOT NULL,         -- running | succeeded | failed | interrupted
        started_at_ms INTEGER NOT NULL,
        ended_at_ms INTEGER,
        owner_pid INTEGER,            -- the supervisor writing it, to tell a crash from a live run
        owner_start INTEGER
    );
    CREATE TABLE calls (
        run_id TEXT NOT NULL,
        call INTEGER NOT NULL,
        agent TEXT NOT NULL,
        input TEXT, input_blob TEXT,
        memory TEXT, memory_blob TEXT,
        output TEXT, output_blob TEXT,
        memory_after TEXT, memory_after_blob TEXT,
        error TEXT,
        started_at_ms INTEGER NOT NULL,
        ended_at_ms INTEGER,
        PRIMARY KEY (run_id, call)
    );
    CREATE TABLE attempts (
        run_id TEXT NOT NULL,
        call INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        agent TEXT NOT NULL,
        reason TEXT,                  -- null while it runs
        decision TEXT,
        pid INTEGER,
        started_at TEXT,
        ended_at TEXT,
        started_at_ms INTEGER NOT NULL,
        ended_at_ms INTEGER,
        duration_ms INTEGER,
        record TEXT,                  -- the exit record, JSON
        PRIMARY KEY (run_id, call, attempt)
    );
    CREATE TABLE events (
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        call INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        at_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        payload TEXT, payload_blob TEXT,
        PRIMARY KEY (run_id, seq)
    );
    CREATE TABLE tool_calls (
        run_id TEXT NOT NULL,
        call INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        call_id INTEGER NOT NULL,
        tool TEXT NOT NULL,
        args TEXT, args_blob TEXT,
        status TEXT NOT NULL,
        result TEXT, result_blob TEXT,
        duration_ms INTEGER NOT NULL,
        at_ms INTEGER NOT NULL,
        PRIMARY KEY (run_id, call, attempt, seq)
    );
    ",
    // 2: indexes for listing, recovery, retention and the operators' queries.
    "
    CREATE INDEX runs_by_start ON runs (started_at_ms);
    CREATE INDEX runs_by_end ON runs (ended_at_ms) WHERE status != 'running';
    CREATE INDEX runs_running ON runs (status) WHERE status = 'running';
    CREATE INDEX attempts_by_end ON attempts (ended_at_ms);
    CREATE INDEX calls_input_blob ON calls (input_blob) WHERE input_blob IS NOT NULL;
    CREATE INDEX calls_memory_blob ON calls (memory_blob) WHERE memory_blob IS NOT NULL;
    CREATE INDEX calls_output_blob ON calls (output_blob) WHERE output_blob IS NOT NULL;
    CREATE INDEX calls_memory_after_blob ON calls (memory_after_blob)
        WHERE memory_after_blob IS NOT NULL;
    CREATE INDEX events_payload_blob ON events (payload_blob) WHERE payload_blob IS NOT NULL;
    CREATE INDEX tool_calls_args_blob ON tool_calls (args_blob) WHERE args_blob IS NOT NULL;
    CREATE INDEX tool_calls_result_blob ON tool_calls (result_blob)
        WHERE result_blob IS NOT NULL;
    ",
    // 3: the tool ledger: destructive calls, begun and finished, by idempotency key.
    "
    CREATE TABLE ledger (
        run_id TEXT NOT NULL,
        task TEXT NOT NULL,           -- the task within the run (a plan's node instance)
        seq INTEGER NOT NULL,         -- the call's number within the task
        tool TEXT NOT NULL,
        args_hash TEXT NOT NULL,
        result TEXT,                  -- null while it runs: {\"ok\": value} or {\"err\": error}
        begun_at_ms INTEGER NOT NULL,
        finished_at_ms INTEGER,
        PRIMARY KEY (run_id, task, seq)
    );
    ",
    // 4: whether a tool call was answered from the trace instead of executed.
    "
    ALTER TABLE tool_calls ADD COLUMN deduplicated INTEGER NOT NULL DEFAULT 0;
    ",
    // 5: a plan run's input, which its resume is checked against (and reads when given none).
    "
    ALTER TABLE runs ADD COLUMN input TEXT;
    ALTER TABLE runs ADD COLUMN input_blob TEXT;
    ",
];

/// Every `(table, column)` that may hold a blob hash.
pub(super) const BLOB_COLUMNS: &[(&str, &str)] = &[
    ("runs", "input_blob"),
    ("calls", "input_blob"),
    ("calls", "memory_blob"),
    ("calls", "output_blob"),
    ("calls", "memory_after_blob"),
    ("events", "payload_blob"),
    ("tool_calls", "args_blob"),
    ("tool_calls", "result_blob"),
];
