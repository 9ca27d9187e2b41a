//! Reading the execution history and the dead letters (`weft executions`, `weft dlq`).

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Serialize)]
pub struct Execution {
    pub id: String,
    pub instance: String,
    pub flow: String,
    pub status: String,
    pub error: Option<String>,
    pub started_at: i64,
    pub finished_at: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct StepRunRecord {
    pub step: String,
    pub attempt: u32,
    pub status: String,
    pub input: Value,
    pub output: Value,
    pub error: Option<String>,
    pub started_at: i64,
    pub duration_ms: i64,
}

#[derive(Debug, Serialize)]
pub struct ExecutionDetail {
    #[serde(flatten)]
    pub execution: Execution,
    pub trigger: Value,
    pub steps: Vec<StepRunRecord>,
}

#[derive(Debug, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub execution: String,
    pub step: String,
    pub queue: String,
    pub attempt: u32,
    pub error: String,
    pub failed_at: i64,
}

pub fn open(data_dir: &std::path::Path) -> Result<Connection, String> {
    let path = data_dir.join("weft.db");
    if !path.exists() {
        return Err(format!(
            "no weft data at {} (has `weft run` run with --data-dir {}?)",
            path.display(),
            data_dir.display()
        ));
    }
    let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| e.to_string())?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    Ok(conn)
}

/// An execution row's runs (a JSON array the store wrote).
fn runs(text: Option<String>) -> Result<Vec<StepRunRecord>, String> {
    text.map_or(Ok(Vec::new()), |t| {
        serde_json::from_str(&t).map_err(|e| format!("unreadable step runs in the history: {e}"))
    })
}

fn json(text: Option<String>) -> Value {
    text.and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null)
}

pub fn executions(
    conn: &Connection,
    flow: Option<&str>,
    status: Option<&str>,
    limit: i64,
) -> Result<Vec<Execution>, String> {
    let mut stmt = conn
        .prepare(
            "SELECT id, instance, flow, status, error, started_at, finished_at FROM executions
             WHERE (?1 IS NULL OR flow = ?1) AND (?2 IS NULL OR status = ?2)
             ORDER BY rowid DESC LIMIT ?3",
        )
        .map_err(|e| e.to_string())?;
    let rows = stmt
        .query_map(params![flow, status, limit], |r| {
            Ok(Execution {
                id: r.get(0)?,
                instance: r.get(1)?,
                flow: r.get(2)?,
                status: r.get(3)?,
                error: r.get(4)?,
                started_at: r.get(5)?,
                finished_at: r.get(6)?,
            })
        })
        .map_err(|e| e.to_string())?;
    rows.collect::<Result<_, _>>().map_err(|e| e.to_string())
}

pub fn execution(conn: &Connection, id: &str) -> Result<Option<ExecutionDetail>, String> {
    let row = conn
        .query_row(
            "SELECT id, instance, flow, status, error, started_at, finished_at, trigger, opening_runs, closing_runs FROM executions WHERE id = ?1",
            [id],
            |r| {
                Ok((
                    Execution { id: r.get(0)?, instance: r.get(1)?, flow: r.get(2)?, status: r.get(3)?, error: r.get(4)?, started_at: r.get(5)?, finished_at: r.get(6)? },
                    r.get::<_, Option<String>>(7)?,
                    r.get::<_, Option<String>>(8)?,
                    r.get::<_, Option<String>>(9)?,
                ))
            },
        )
        .optional()
        .map_err(|e| e.to_string())?;
    let Some((execution, trigger, opening, closing)) = row else {
        return Ok(None);
    };
    let mut stmt = conn
        .prepare("SELECT step, attempt, status, input, output, error, started_at, duration_ms FROM step_runs WHERE execution = ?1 ORDER BY id")
        .map_err(|e| e.to_string())?;
    let rows: Vec<StepRunRecord> = stmt
        .query_map([id], |r| {
            Ok(StepRunRecord {
                step: r.get(0)?,
                attempt: r.get(1)?,
                status: r.get(2)?,
                input: json(r.get(3)?),
                output: json(r.get(4)?),
                error: r.get(5)?,
                started_at: r.get(6)?,
                duration_ms: r.get(7)?,
            })
        })
        .map_err(|e| e.to_string())?
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    // The runs of the commit that started the execution and of the one that finished it are
    // in its row (see the store's `Held`); the others are rows. Stable by start time: a
    // replayed execution's later runs come after the closing ones they were written before.
    let mut steps = runs(opening)?;
    steps.extend(rows);
    steps.extend(runs(closing)?);
    steps.sort_by_key(|s| s.started_at);
    Ok(Some(ExecutionDetail {
        execution,
        trigger: json(trigger),
        steps,
    }))
}

pub fn dead_letters(conn: &Connection) -> Result<Vec<DeadLetter>, String> {
    let mut stmt = conn
        .prepare("SELECT id, execution, step, queue, attempt, error, failed_at FROM dead_letters ORDER BY id")
        .map_err(|e| e.to_string())?;
    let rows = stmt
        .query_map([], |r| {
            Ok(DeadLetter {
                id: r.get(0)?,
                execution: r.get(1)?,
                step: r.get(2)?,
                queue: r.get(3)?,
                attempt: r.get(4)?,
                error: r.get(5)?,
                failed_at: r.get(6)?,
            })
        })
        .map_err(|e| e.to_string())?;
    rows.collect::<Result<_, _>>().map_err(|e| e.to_string())
}
