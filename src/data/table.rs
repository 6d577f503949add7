//! Raw tables: the rows of a TSV, CSV, JSON-lines or parquet file, each with the line it came from.
//!
//! Readers check shape (field counts, UTF-8, JSON syntax) and keep every row's line number so that
//! the later mapping to typed columns can name the file and line of a bad value.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::config::{FileFormat, Quoting};
use crate::{Error, Result};

/// One raw value before it is given a type by a column mapping.
#[derive(Debug, Clone, PartialEq)]
pub enum RawValue {
    Null,
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// A JSON array or a parquet list (a sentence's words or tags).
    List(Vec<RawValue>),
}

impl RawValue {
    /// The text of a string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            RawValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Short description for error messages.
    pub fn describe(&self) -> String {
        match self {
            RawValue::Null => "null".into(),
            RawValue::Str(s) => format!("{s:?}"),
            RawValue::Int(i) => i.to_string(),
            RawValue::Float(f) => f.to_string(),
            RawValue::Bool(b) => b.to_string(),
            RawValue::List(v) => format!("[{}]", v.iter().map(RawValue::describe).collect::<Vec<_>>().join(", ")),
        }
    }
}

/// A row and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRow {
    /// 1-based line in a text file, 1-based row number in a parquet file.
    pub line: usize,
    /// 0-based position among the file's data rows (Hugging Face's `idx`).
    pub index: usize,
    pub values: Vec<RawValue>,
}

/// A file read into named columns.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTable {
    pub path: PathBuf,
    pub columns: Vec<String>,
    pub rows: Vec<RawRow>,
    /// "line" for text files, "row" for parquet: how [`RawRow::line`] counts.
    pub line_unit: &'static str,
}

impl RawTable {
    /// Reads `path` in `format`. The first line of text formats is the header.
    pub fn read(path: &Path, format: FileFormat) -> Result<RawTable> {
        Self::read_quoted(path, format, None)
    }

    /// As [`RawTable::read`], with `data.quoting` for CSV and TSV. Unset, CSV files use CSV quoting,
    /// and TSV files too unless quoting breaks them: when a quoted field would run across lines or
    /// the rows would not parse, and reading `"` as literal text gives every line the header's
    /// fields, the file is read that way (GLUE's TSVs hold unbalanced quotes).
    pub fn read_quoted(path: &Path, format: FileFormat, quoting: Option<Quoting>) -> Result<RawTable> {
        match (format, quoting) {
            (FileFormat::GlueTsv, _) | (FileFormat::Tsv, Some(Quoting::None)) => read_glue_tsv(path, None, false),
            (FileFormat::Csv, Some(Quoting::None)) => read_csv(path, b',', false).map(|(t, _)| t),
            (FileFormat::Csv, _) => read_csv(path, b',', true).map(|(t, _)| t),
            (FileFormat::Tsv, Some(Quoting::Csv)) => read_csv(path, b'\t', true).map(|(t, _)| t),
            (FileFormat::Tsv, None) => match read_csv(path, b'\t', true) {
                Ok((table, None)) => Ok(table),
                Ok((table, Some(_))) => Ok(read_glue_tsv(path, None, false).unwrap_or(table)),
                Err(quoted) => read_glue_tsv(path, None, false).map_err(|_| quoted),
            },
            (FileFormat::JsonLines, _) => read_json_lines(path),
            (FileFormat::Parquet, _) => read_parquet(path),
            (FileFormat::Conll, _) => Err(Error::config(
                "data.format",
                format!("{}: CoNLL files hold tagged words, read with task = \"token-classification\"", path.display()),
            )),
        }
    }

    /// One of GLUE's own TSVs as Hugging Face's GLUE builder reads it (a tab-separated reader
    /// without quoting): a row with fewer fields than the header gets [`RawValue::Null`] for the
    /// missing ones (the builder then drops the row when a column it uses is missing), extra
    /// fields are ignored. `columns` names the fields of a file without a header row (CoLA's train
    /// and dev files).
    pub fn read_glue_task_tsv(path: &Path, columns: Option<&[&str]>) -> Result<RawTable> {
        read_glue_tsv(path, columns, true)
    }

    /// The position of `name` among the columns, or an error naming the file and the columns there are.
    pub fn column(&self, name: &str) -> Result<usize> {
        self.columns.iter().position(|c| c == name).ok_or_else(|| {
            Error::data(&self.path, None, format!("missing column {name:?}; the file has columns {:?}", self.columns))
        })
    }

    /// An error about a row of this table.
    pub fn error_at(&self, row: &RawRow, message: impl Into<String>) -> Error {
        if self.line_unit == "line" {
            Error::data(&self.path, Some(row.line), message)
        } else {
            Error::data(&self.path, None, format!("row {}: {}", row.line, message.into()))
        }
    }
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// Splits text into `(line number, line)` pairs, checking UTF-8 per line and dropping a leading BOM
/// and line ends (`\n` or `\r\n`). Blank lines are skipped, as Python's csv readers skip them.
fn text_lines(path: &Path, bytes: &[u8]) -> Result<Vec<(usize, String)>> {
    let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
    let mut out = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = std::str::from_utf8(raw).map_err(|e| {
            Error::data(path, Some(i + 1), format!("invalid UTF-8 at byte {} of the line", e.valid_up_to()))
        })?;
        if !line.is_empty() {
            out.push((i + 1, line.to_string()));
        }
    }
    Ok(out)
}

/// With `lenient`, rows of another length are padded with nulls or cut to the header's length
/// instead of being errors.
fn read_glue_tsv(path: &Path, names: Option<&[&str]>, lenient: bool) -> Result<RawTable> {
    let bytes = read_bytes(path)?;
    let mut lines = text_lines(path, &bytes)?.into_iter();
    let columns: Vec<String> = match names {
        Some(names) => names.iter().map(|s| s.to_string()).collect(),
        None => match lines.next() {
            Some((_, header)) => header.split('\t').map(|s| s.to_string()).collect(),
            None => return Err(Error::data(path, None, "the file is empty: expected a header line")),
        },
    };
    let mut rows = Vec::new();
    for (index, (line, text)) in lines.enumerate() {
        let mut values: Vec<RawValue> = text.split('\t').map(|s| RawValue::Str(s.to_string())).collect();
        if lenient {
            values.resize(columns.len(), RawValue::Null);
        }
        if values.len() != columns.len() {
            return Err(Error::data(
                path,
                Some(line),
                format!(
                    "expected {} tab-separated fields ({}), found {}",
                    columns.len(),
                    columns.join(", "),
                    values.len()
                ),
            ));
        }
        rows.push(RawRow { line, index, values });
    }
    Ok(RawTable { path: path.to_path_buf(), columns, rows, line_unit: "line" })
}

/// Reads a delimited file; with `quote`, also returns the lines of the first row whose quoted field
/// runs across a line break (first, last), and errors say where such a field began.
fn read_csv(path: &Path, delimiter: u8, quote: bool) -> Result<(RawTable, Option<(usize, usize)>)> {
    let bytes = read_bytes(path)?;
    let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(&bytes);
    let has_quotes = quote && bytes.contains(&b'"');
    let mut reader = csv::ReaderBuilder::new().delimiter(delimiter).quoting(quote).has_headers(true).from_reader(bytes);
    let mut spanning: Option<(usize, usize)> = None;
    let csv_error = |e: csv::Error, spanning: Option<(usize, usize)>| {
        let line = e.position().map(|p| p.line() as usize);
        let mut message = match e.kind() {
            csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
                format!("expected {expected_len} fields, found {len}")
            }
            csv::ErrorKind::Utf8 { err, .. } => format!("invalid UTF-8 in field {}", err.field() + 1),
            _ => e.to_string(),
        };
        // The failing row's own first line holding a quote means its quoted field ran on.
        let own_quote = e.position().and_then(|p| {
            let rest = bytes.get(p.byte() as usize..)?;
            let first_line = rest.split(|&b| b == b'\n').next()?;
            first_line.contains(&b'"').then_some(p.line() as usize)
        });
        if let Some((first, last)) = spanning {
            message += &format!("; a quoted field that begins on line {first} runs to line {last}");
        } else if let Some(first) = own_quote.filter(|_| quote) {
            message += &format!("; a quoted field that begins on line {first} runs across its line break");
        }
        if has_quotes {
            message += "; if `\"` is literal text in this file, set data.quoting = \"none\"";
        }
        Error::data(path, line, message)
    };
    let columns: Vec<String> =
        reader.headers().map_err(|e| csv_error(e, None))?.iter().map(|s| s.to_string()).collect();
    if columns.iter().all(|c| c.is_empty()) {
        return Err(Error::data(path, None, "the file is empty: expected a header line"));
    }
    let mut rows = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let record = record.map_err(|e| csv_error(e, spanning))?;
        let line = record.position().map(|p| p.line() as usize).unwrap_or(index + 2);
        // Only a quoted field can hold a line break.
        let breaks: usize = record.iter().map(|f| f.matches('\n').count()).sum();
        if breaks > 0 && spanning.is_none() {
            spanning = Some((line, line + breaks));
        }
        let values = record.iter().map(|s| RawValue::Str(s.to_string())).collect();
        rows.push(RawRow { line, index, values });
    }
    Ok((RawTable { path: path.to_path_buf(), columns, rows, line_unit: "line" }, spanning))
}

fn read_json_lines(path: &Path) -> Result<RawTable> {
    let bytes = read_bytes(path)?;
    let mut columns: Vec<String> = Vec::new();
    let mut objects = Vec::new();
    for (line, text) in text_lines(path, &bytes)? {
        if text.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::data(path, Some(line), format!("invalid JSON: {e}")))?;
        let serde_json::Value::Object(map) = value else {
            return Err(Error::data(path, Some(line), "expected a JSON object per line"));
        };
        for key in map.keys() {
            if !columns.contains(key) {
                columns.push(key.clone());
            }
        }
        objects.push((line, map));
    }
    let rows = objects
        .into_iter()
        .enumerate()
        .map(|(index, (line, map))| {
            let values = columns.iter().map(|c| map.get(c).map(json_value).unwrap_or(RawValue::Null)).collect();
            RawRow { line, index, values }
        })
        .collect();
    Ok(RawTable { path: path.to_path_buf(), columns, rows, line_unit: "line" })
}

fn json_value(v: &serde_json::Value) -> RawValue {
    match v {
        serde_json::Value::Null => RawValue::Null,
        serde_json::Value::Bool(b) => RawValue::Bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => RawValue::Int(i),
            None => RawValue::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => RawValue::Str(s.clone()),
        serde_json::Value::Array(items) => RawValue::List(items.iter().map(json_value).collect()),
        other => RawValue::Str(other.to_string()),
    }
}

fn read_parquet(path: &Path) -> Result<RawTable> {
    use parquet::file::reader::{FileReader, SerializedFileReader};

    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let bad = |e: parquet::errors::ParquetError| Error::data(path, None, format!("not a readable parquet file: {e}"));
    let reader = SerializedFileReader::new(file).map_err(bad)?;
    let columns: Vec<String> = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .root_schema()
        .get_fields()
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    let mut rows = Vec::new();
    for (index, row) in reader.get_row_iter(None).map_err(bad)?.enumerate() {
        let row = row.map_err(|e| Error::data(path, None, format!("row {}: {e}", index + 1)))?;
        let mut values = vec![RawValue::Null; columns.len()];
        for (name, field) in row.get_column_iter() {
            let Some(slot) = columns.iter().position(|c| c == name) else { continue };
            values[slot] = parquet_value(field)
                .map_err(|why| Error::data(path, None, format!("row {}: column {name:?} {why}", index + 1)))?;
        }
        rows.push(RawRow { line: index + 1, index, values });
    }
    Ok(RawTable { path: path.to_path_buf(), columns, rows, line_unit: "row" })
}

/// A parquet field as a raw value; lists (a sentence's words or tags) item by item.
fn parquet_value(field: &parquet::record::Field) -> std::result::Result<RawValue, String> {
    use parquet::record::Field;
    Ok(match field {
        Field::ListInternal(list) => {
            RawValue::List(list.elements().iter().map(parquet_value).collect::<std::result::Result<_, _>>()?)
        }
        Field::Null => RawValue::Null,
        Field::Bool(b) => RawValue::Bool(*b),
        Field::Byte(x) => RawValue::Int(*x as i64),
        Field::Short(x) => RawValue::Int(*x as i64),
        Field::Int(x) => RawValue::Int(*x as i64),
        Field::Long(x) => RawValue::Int(*x),
        Field::UByte(x) => RawValue::Int(*x as i64),
        Field::UShort(x) => RawValue::Int(*x as i64),
        Field::UInt(x) => RawValue::Int(*x as i64),
        Field::ULong(x) => RawValue::Int(*x as i64),
        Field::Float(x) => RawValue::Float(*x as f64),
        Field::Double(x) => RawValue::Float(*x),
        Field::Str(s) => RawValue::Str(s.clone()),
        Field::Bytes(b) => match std::str::from_utf8(b.data()) {
            Ok(s) => RawValue::Str(s.to_string()),
            Err(_) => return Err("holds bytes that are not UTF-8".into()),
        },
        other => RawValue::Str(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn glue_tsv_keeps_quotes_and_strips_bom() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "a.tsv", "\u{feff}a\tb\r\nsaid \" hi \"\t1\r\n\r\nx\t0\n".as_bytes());
        let t = RawTable::read(&p, FileFormat::GlueTsv).unwrap();
        assert_eq!(t.columns, ["a", "b"]);
        assert_eq!(t.rows.len(), 2);
        assert_eq!(t.rows[0].values[0], RawValue::Str("said \" hi \"".into()));
        assert_eq!((t.rows[1].line, t.rows[1].index), (4, 1));
    }

    #[test]
    fn field_count_and_utf8_errors_name_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "bad.tsv", b"a\tb\nx\ty\nonly-one\n");
        let err = RawTable::read(&p, FileFormat::GlueTsv).unwrap_err().to_string();
        assert!(err.contains("bad.tsv:3") && err.contains("expected 2"), "{err}");
        let p = write(d.path(), "bad.csv", b"a,b\nx,y\nz\n");
        let err = RawTable::read(&p, FileFormat::Csv).unwrap_err().to_string();
        assert!(err.contains("bad.csv:3") && err.contains("expected 2 fields"), "{err}");
        let p = write(d.path(), "utf.tsv", b"a\tb\nx\t\xff\n");
        let err = RawTable::read(&p, FileFormat::GlueTsv).unwrap_err().to_string();
        assert!(err.contains("utf.tsv:2") && err.contains("UTF-8"), "{err}");
        let p = write(d.path(), "utf.csv", b"a,b\nx,y\nx,\xff\n");
        let err = RawTable::read(&p, FileFormat::Csv).unwrap_err().to_string();
        assert!(err.contains("utf.csv:3") && err.contains("UTF-8"), "{err}");
    }

    #[test]
    fn csv_honours_quotes_and_json_lines_types() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "q.csv", b"text,label\n\"a, b\",pos\n");
        let t = RawTable::read(&p, FileFormat::Csv).unwrap();
        assert_eq!(t.rows[0].values[0], RawValue::Str("a, b".into()));
        let p = write(d.path(), "r.jsonl", b"{\"t\": \"x\", \"l\": 1}\n{\"t\": \"y\"}\n");
        let t = RawTable::read(&p, FileFormat::JsonLines).unwrap();
        assert_eq!(t.rows[0].values, [RawValue::Str("x".into()), RawValue::Int(1)]);
        assert_eq!(t.rows[1].values[1], RawValue::Null);
        let p = write(d.path(), "bad.jsonl", b"{\"t\": 1}\n{oops\n");
        let err = RawTable::read(&p, FileFormat::JsonLines).unwrap_err().to_string();
        assert!(err.contains("bad.jsonl:2") && err.contains("invalid JSON"), "{err}");
    }

    #[test]
    fn quoting_can_be_turned_off_and_tsv_detects_literal_quotes() {
        let d = tempfile::tempdir().unwrap();
        // Line 3 opens a quote that never closes (as in GLUE RTE): CSV quoting swallows the rest.
        let text = b"id\ta\tb\tlabel\n0\tx\ty\t1\n1\t\"unbalanced\tz\t0\n2\tp\tq\t1\n";
        let p = write(d.path(), "rte.tsv", text);
        let err = RawTable::read_quoted(&p, FileFormat::Tsv, Some(Quoting::Csv)).unwrap_err().to_string();
        assert!(err.contains("rte.tsv:3"), "{err}");
        assert!(err.contains("begins on line 3") && err.contains("data.quoting = \"none\""), "{err}");
        for quoting in [Some(Quoting::None), None] {
            let t = RawTable::read_quoted(&p, FileFormat::Tsv, quoting).unwrap();
            assert_eq!(t.rows.len(), 3, "{quoting:?}");
            assert_eq!(t.rows[1].values[1], RawValue::Str("\"unbalanced".into()));
        }
        // Well-formed quoting in a TSV is still honoured when nothing forces literal quotes.
        let p = write(d.path(), "ok.tsv", b"a\tb\n\"x\ty\"\t1\n");
        let t = RawTable::read_quoted(&p, FileFormat::Tsv, None).unwrap();
        assert_eq!(t.rows[0].values[0], RawValue::Str("x\ty".into()));
        // CSV without quoting keeps the quotes.
        let p = write(d.path(), "lit.csv", b"a,b\n\"x,1\n");
        let t = RawTable::read_quoted(&p, FileFormat::Csv, Some(Quoting::None)).unwrap();
        assert_eq!(t.rows[0].values[0], RawValue::Str("\"x".into()));
    }

    #[test]
    fn formats_follow_extensions() {
        assert_eq!(FileFormat::from_path(Path::new("a/b.CSV")), Some(FileFormat::Csv));
        assert_eq!(FileFormat::from_path(Path::new("b.jsonl")), Some(FileFormat::JsonLines));
        assert_eq!(FileFormat::from_path(Path::new("b.parquet")), Some(FileFormat::Parquet));
        assert_eq!(FileFormat::from_path(Path::new("b.txt")), None);
    }
}
