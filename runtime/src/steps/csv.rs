//! `csv.parse` and `csv.write`.

#[cfg(test)]
use serde_json::json;
use serde_json::{Map, Value};
use weft_plan::Builtin;

use super::{StepError, required_str, str_field};

/// Runs a `csv.*` built-in.
pub(super) fn run(builtin: Builtin, input: &Value) -> Result<Value, StepError> {
    match builtin {
        Builtin::CsvParse => parse(input),
        _ => write(input),
    }
}

fn delimiter(input: &Value) -> u8 {
    str_field(input, "delimiter")
        .and_then(|d| d.bytes().next())
        .unwrap_or(b',')
}

fn parse(input: &Value) -> Result<Value, StepError> {
    let text = required_str(input, "text")?;
    let header = input.get("header").and_then(Value::as_bool).unwrap_or(true);
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter(input))
        .has_headers(header)
        .flexible(true)
        .from_reader(text.as_bytes());
    let columns: Vec<String> = if header {
        reader
            .headers()
            .map_err(|e| StepError::permanent(format!("CSV header: {e}")))?
            .iter()
            .map(str::to_string)
            .collect()
    } else {
        Vec::new()
    };
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| StepError::permanent(format!("CSV: {e}")))?;
        if header {
            let row: Map<String, Value> = columns
                .iter()
                .zip(record.iter())
                .map(|(k, v)| (k.clone(), Value::String(v.to_string())))
                .collect();
            rows.push(Value::Object(row));
        } else {
            rows.push(Value::Array(
                record
                    .iter()
                    .map(|v| Value::String(v.to_string()))
                    .collect(),
            ));
        }
    }
    Ok(Value::Array(rows))
}

fn write(input: &Value) -> Result<Value, StepError> {
    let rows = match input.get("rows") {
        Some(Value::Array(rows)) => rows,
        _ => return Err(StepError::permanent("`rows` must be a list")),
    };
    let columns: Vec<String> = match input.get("columns").and_then(Value::as_array) {
        Some(cols) => cols
            .iter()
            .filter_map(|c| c.as_str().map(str::to_string))
            .collect(),
        None => rows
            .first()
            .and_then(Value::as_object)
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default(),
    };
    let mut writer = csv::WriterBuilder::new()
        .delimiter(delimiter(input))
        .from_writer(Vec::new());
    let cell = |v: &Value| {
        v.as_str().map_or_else(
            || {
                if v.is_null() {
                    String::new()
                } else {
                    v.to_string()
                }
            },
            str::to_string,
        )
    };
    if !columns.is_empty() {
        writer
            .write_record(&columns)
            .map_err(|e| StepError::permanent(e.to_string()))?;
    }
    for row in rows {
        let record: Vec<String> = match row {
            Value::Object(o) => columns
                .iter()
                .map(|c| o.get(c).map(cell).unwrap_or_default())
                .collect(),
            Value::Array(a) => a.iter().map(cell).collect(),
            other => vec![cell(other)],
        };
        writer
            .write_record(&record)
            .map_err(|e| StepError::permanent(e.to_string()))?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|e| StepError::permanent(e.to_string()))?;
    Ok(Value::String(String::from_utf8_lossy(&bytes).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_round_trip() {
        let rows = parse(&json!({ "text": "sku,qty\nA,1\nB,\"2,5\"\n" })).unwrap();
        assert_eq!(
            rows,
            json!([{ "sku": "A", "qty": "1" }, { "sku": "B", "qty": "2,5" }])
        );
        let text = write(&json!({ "rows": rows })).unwrap();
        assert_eq!(text, json!("sku,qty\nA,1\nB,\"2,5\"\n"));
    }
}
