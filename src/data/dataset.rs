//! Dataset and DatasetDict: named, typed columns and the splits of one task, printed as Hugging Face does.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::OnceLock;

use crate::{bail, Result};

/// The scalar types a column can hold, named as Hugging Face `datasets` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    String,
    Int8,
    Int32,
    Int64,
    Float32,
    Float64,
}

impl Dtype {
    pub fn name(self) -> &'static str {
        match self {
            Dtype::String => "string",
            Dtype::Int8 => "int8",
            Dtype::Int32 => "int32",
            Dtype::Int64 => "int64",
            Dtype::Float32 => "float32",
            Dtype::Float64 => "float64",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Self::String, Self::Int8, Self::Int32, Self::Int64, Self::Float32, Self::Float64]
            .into_iter()
            .find(|d| d.name() == name)
    }
}

/// What a column means: a plain value, a class label with names, or a list of values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feature {
    Value(Dtype),
    /// Integer labels `0..names.len()`; `-1` marks an unlabelled row (GLUE test splits).
    ClassLabel {
        names: Vec<String>,
    },
    List(Dtype),
}

impl Feature {
    /// The column storage this feature needs.
    fn kind(&self) -> ColumnKind {
        match self {
            Feature::Value(Dtype::String) => ColumnKind::Str,
            Feature::Value(Dtype::Float32 | Dtype::Float64) => ColumnKind::Float,
            Feature::Value(_) | Feature::ClassLabel { .. } => ColumnKind::Int,
            Feature::List(Dtype::String) => ColumnKind::StrList,
            Feature::List(_) => ColumnKind::IntList,
        }
    }

    /// A compact, stable text form, used in cache metadata (and parsed back by [`Feature::parse`]).
    pub fn encode(&self) -> String {
        match self {
            Feature::Value(d) => format!("value:{}", d.name()),
            Feature::List(d) => format!("list:{}", d.name()),
            Feature::ClassLabel { names } => {
                format!("classlabel:{}", serde_json::to_string(names).unwrap_or_default())
            }
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        let (kind, rest) = text.split_once(':')?;
        match kind {
            "value" => Dtype::from_name(rest).map(Feature::Value),
            "list" => Dtype::from_name(rest).map(Feature::List),
            "classlabel" => serde_json::from_str(rest).ok().map(|names| Feature::ClassLabel { names }),
            _ => None,
        }
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Feature::Value(d) => write!(f, "Value('{}')", d.name()),
            Feature::List(d) => write!(f, "List(Value('{}'))", d.name()),
            Feature::ClassLabel { names } => {
                let names: Vec<String> = names.iter().map(|n| py_repr(n)).collect();
                write!(f, "ClassLabel(names=[{}])", names.join(", "))
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColumnKind {
    Str,
    Int,
    Float,
    IntList,
    StrList,
}

/// A list column stored flat: row `i` is `values[offsets[i]..offsets[i + 1]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Lists<T> {
    pub values: Vec<T>,
    pub offsets: Vec<usize>,
}

/// A list-of-integers column (token ids, tags).
pub type IntLists = Lists<i64>;
/// A list-of-strings column (a sentence's words).
pub type StrLists = Lists<String>;

impl<T: Clone> Lists<T> {
    pub fn new() -> Self {
        Self { values: Vec::new(), offsets: vec![0] }
    }

    pub fn push(&mut self, row: impl IntoIterator<Item = T>) {
        self.values.extend(row);
        self.offsets.push(self.values.len());
    }

    pub fn row(&self, i: usize) -> &[T] {
        &self.values[self.offsets[i]..self.offsets[i + 1]]
    }

    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn select(&self, rows: &[usize]) -> Self {
        let mut out = Self::new();
        for &r in rows {
            out.push(self.row(r).iter().cloned());
        }
        out
    }
}

impl<T: Clone> Default for Lists<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// The values of one column.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    Str(Vec<String>),
    Int(Vec<i64>),
    Float(Vec<f64>),
    IntList(IntLists),
    StrList(StrLists),
}

impl Column {
    pub fn len(&self) -> usize {
        match self {
            Column::Str(v) => v.len(),
            Column::Int(v) => v.len(),
            Column::Float(v) => v.len(),
            Column::IntList(v) => v.len(),
            Column::StrList(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn kind(&self) -> ColumnKind {
        match self {
            Column::Str(_) => ColumnKind::Str,
            Column::Int(_) => ColumnKind::Int,
            Column::Float(_) => ColumnKind::Float,
            Column::IntList(_) => ColumnKind::IntList,
            Column::StrList(_) => ColumnKind::StrList,
        }
    }

    fn select(&self, rows: &[usize]) -> Column {
        match self {
            Column::Str(v) => Column::Str(rows.iter().map(|&r| v[r].clone()).collect()),
            Column::Int(v) => Column::Int(rows.iter().map(|&r| v[r]).collect()),
            Column::Float(v) => Column::Float(rows.iter().map(|&r| v[r]).collect()),
            Column::IntList(v) => Column::IntList(v.select(rows)),
            Column::StrList(v) => Column::StrList(v.select(rows)),
        }
    }

    fn cell(&self, row: usize) -> Cell<'_> {
        match self {
            Column::Str(v) => Cell::Str(&v[row]),
            Column::Int(v) => Cell::Int(v[row]),
            Column::Float(v) => Cell::Float(v[row]),
            Column::IntList(v) => Cell::IntList(v.row(row)),
            Column::StrList(v) => Cell::StrList(v.row(row)),
        }
    }

    /// Feeds the column's contents to a hasher, with its kind, so equal data always hashes equal.
    fn hash_into(&self, h: &mut xxhash_rust::xxh3::Xxh3) {
        h.update(&[self.kind() as u8]);
        h.update(&(self.len() as u64).to_le_bytes());
        match self {
            Column::Str(v) => {
                for s in v {
                    h.update(&(s.len() as u64).to_le_bytes());
                    h.update(s.as_bytes());
                }
            }
            Column::Int(v) => v.iter().for_each(|x| h.update(&x.to_le_bytes())),
            Column::Float(v) => v.iter().for_each(|x| h.update(&x.to_bits().to_le_bytes())),
            Column::IntList(v) => {
                v.offsets.iter().for_each(|x| h.update(&(*x as u64).to_le_bytes()));
                v.values.iter().for_each(|x| h.update(&x.to_le_bytes()));
            }
            Column::StrList(v) => {
                v.offsets.iter().for_each(|x| h.update(&(*x as u64).to_le_bytes()));
                for s in &v.values {
                    h.update(&(s.len() as u64).to_le_bytes());
                    h.update(s.as_bytes());
                }
            }
        }
    }
}

/// One value of a row, borrowed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell<'a> {
    Str(&'a str),
    Int(i64),
    Float(f64),
    IntList(&'a [i64]),
    StrList(&'a [String]),
}

impl fmt::Display for Cell<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cell::Str(s) => f.write_str(&py_repr(s)),
            Cell::Int(x) => write!(f, "{x}"),
            Cell::Float(x) => write!(f, "{x:?}"),
            Cell::IntList(v) => {
                let items: Vec<String> = v.iter().map(|x| x.to_string()).collect();
                write!(f, "[{}]", items.join(", "))
            }
            Cell::StrList(v) => {
                let items: Vec<String> = v.iter().map(|x| py_repr(x)).collect();
                write!(f, "[{}]", items.join(", "))
            }
        }
    }
}

/// A table of named, typed columns of equal length.
#[derive(Debug, Clone)]
pub struct Dataset {
    names: Vec<String>,
    features: Vec<Feature>,
    columns: Vec<Column>,
    num_rows: usize,
    fingerprint: OnceLock<String>,
}

impl PartialEq for Dataset {
    fn eq(&self, other: &Self) -> bool {
        self.names == other.names && self.features == other.features && self.columns == other.columns
    }
}

impl Dataset {
    /// Builds a dataset, checking that every column matches its feature and all have one length.
    pub fn new(columns: Vec<(String, Feature, Column)>) -> Result<Self> {
        let num_rows = columns.first().map(|c| c.2.len()).unwrap_or(0);
        let mut seen = BTreeSet::new();
        for (name, feature, column) in &columns {
            if !seen.insert(name.as_str()) {
                bail!("column {name:?} appears twice");
            }
            if feature.kind() != column.kind() {
                bail!("column {name:?}: feature {feature} does not match its values");
            }
            if column.len() != num_rows {
                bail!("column {name:?} has {} rows, the first column has {num_rows}", column.len());
            }
            if let (Feature::ClassLabel { names }, Column::Int(values)) = (feature, column) {
                if let Some(bad) = values.iter().find(|&&v| v < -1 || v >= names.len() as i64) {
                    bail!("column {name:?}: label {bad} is outside ClassLabel({} names)", names.len());
                }
            }
        }
        let (names, rest): (Vec<_>, Vec<_>) = columns.into_iter().map(|(n, f, c)| (n, (f, c))).unzip();
        let (features, columns) = rest.into_iter().unzip();
        Ok(Self { names, features, columns, num_rows, fingerprint: OnceLock::new() })
    }

    /// A dataset of string columns, e.g. sentences to classify.
    pub fn from_texts(columns: Vec<(String, Vec<String>)>) -> Result<Self> {
        Self::new(
            columns
                .into_iter()
                .map(|(name, values)| (name, Feature::Value(Dtype::String), Column::Str(values)))
                .collect(),
        )
    }

    pub fn num_rows(&self) -> usize {
        self.num_rows
    }

    pub fn len(&self) -> usize {
        self.num_rows
    }

    pub fn is_empty(&self) -> bool {
        self.num_rows == 0
    }

    pub fn column_names(&self) -> &[String] {
        &self.names
    }

    /// `(name, feature)` for every column, in order.
    pub fn features(&self) -> impl Iterator<Item = (&str, &Feature)> {
        self.names.iter().map(String::as_str).zip(self.features.iter())
    }

    fn position(&self, name: &str) -> Result<usize> {
        match self.names.iter().position(|n| n == name) {
            Some(i) => Ok(i),
            None => bail!("no column {name:?}; the columns are {:?}", self.names),
        }
    }

    pub fn feature(&self, name: &str) -> Result<&Feature> {
        Ok(&self.features[self.position(name)?])
    }

    pub fn column(&self, name: &str) -> Result<&Column> {
        Ok(&self.columns[self.position(name)?])
    }

    pub fn strings(&self, name: &str) -> Result<&[String]> {
        match self.column(name)? {
            Column::Str(v) => Ok(v),
            _ => bail!("column {name:?} does not hold strings"),
        }
    }

    pub fn ints(&self, name: &str) -> Result<&[i64]> {
        match self.column(name)? {
            Column::Int(v) => Ok(v),
            _ => bail!("column {name:?} does not hold integers"),
        }
    }

    pub fn floats(&self, name: &str) -> Result<&[f64]> {
        match self.column(name)? {
            Column::Float(v) => Ok(v),
            _ => bail!("column {name:?} does not hold floats"),
        }
    }

    pub fn int_lists(&self, name: &str) -> Result<&IntLists> {
        match self.column(name)? {
            Column::IntList(v) => Ok(v),
            _ => bail!("column {name:?} does not hold integer lists"),
        }
    }

    pub fn str_lists(&self, name: &str) -> Result<&StrLists> {
        match self.column(name)? {
            Column::StrList(v) => Ok(v),
            _ => bail!("column {name:?} does not hold string lists"),
        }
    }

    /// Row `i` as `(column, value)` pairs.
    pub fn row(&self, i: usize) -> Result<Vec<(&str, Cell<'_>)>> {
        if i >= self.num_rows {
            bail!("row {i} is out of range: the dataset has {} rows", self.num_rows);
        }
        Ok(self.names.iter().map(String::as_str).zip(self.columns.iter().map(|c| c.cell(i))).collect())
    }

    /// Row `i` printed as a Python dict, as Hugging Face prints `dataset[i]`.
    pub fn format_row(&self, i: usize) -> Result<String> {
        let cells: Vec<String> =
            self.row(i)?.into_iter().map(|(name, cell)| format!("{}: {cell}", py_repr(name))).collect();
        Ok(format!("{{{}}}", cells.join(", ")))
    }

    /// The features printed as Hugging Face prints `dataset.features`.
    pub fn format_features(&self) -> String {
        let items: Vec<String> = self.features().map(|(n, f)| format!("{}: {f}", py_repr(n))).collect();
        format!("{{{}}}", items.join(", "))
    }

    /// A new dataset holding `rows`, in that order.
    pub fn select(&self, rows: &[usize]) -> Result<Dataset> {
        if let Some(bad) = rows.iter().find(|&&r| r >= self.num_rows) {
            bail!("row {bad} is out of range: the dataset has {} rows", self.num_rows);
        }
        let columns = self
            .names
            .iter()
            .zip(&self.features)
            .zip(&self.columns)
            .map(|((n, f), c)| (n.clone(), f.clone(), c.select(rows)))
            .collect();
        Dataset::new(columns)
    }

    /// Rows `start..end` (clamped to the dataset).
    pub fn slice(&self, start: usize, end: usize) -> Result<Dataset> {
        let end = end.min(self.num_rows);
        let rows: Vec<usize> = (start.min(end)..end).collect();
        self.select(&rows)
    }

    /// This dataset with `columns` added; a column of the same name is replaced in place.
    pub fn with_columns(&self, columns: Vec<(String, Feature, Column)>) -> Result<Dataset> {
        let mut all: Vec<(String, Feature, Column)> = self
            .names
            .iter()
            .cloned()
            .zip(self.features.iter().cloned())
            .zip(self.columns.iter().cloned())
            .map(|((n, f), c)| (n, f, c))
            .collect();
        for (name, feature, column) in columns {
            match all.iter_mut().find(|(n, _, _)| *n == name) {
                Some(slot) => *slot = (name, feature, column),
                None => all.push((name, feature, column)),
            }
        }
        Dataset::new(all)
    }

    /// This dataset without the named columns.
    pub fn remove_columns(&self, names: &[&str]) -> Result<Dataset> {
        for name in names {
            self.position(name)?;
        }
        let columns = self
            .names
            .iter()
            .zip(&self.features)
            .zip(&self.columns)
            .filter(|((n, _), _)| !names.contains(&n.as_str()))
            .map(|((n, f), c)| (n.clone(), f.clone(), c.clone()))
            .collect();
        Dataset::new(columns)
    }

    /// A content hash of names, features and values: equal data gives an equal fingerprint.
    pub fn fingerprint(&self) -> &str {
        self.fingerprint.get_or_init(|| {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            for ((name, feature), column) in self.names.iter().zip(&self.features).zip(&self.columns) {
                h.update(name.as_bytes());
                h.update(&[0]);
                h.update(feature.encode().as_bytes());
                h.update(&[0]);
                column.hash_into(&mut h);
            }
            format!("{:032x}", h.digest128())
        })
    }

    /// Consumes the dataset into its `(name, feature, column)` triples.
    pub fn into_columns(self) -> Vec<(String, Feature, Column)> {
        self.names.into_iter().zip(self.features).zip(self.columns).map(|((n, f), c)| (n, f, c)).collect()
    }
}

impl fmt::Display for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_dataset(f, self, 0)
    }
}

fn fmt_dataset(f: &mut fmt::Formatter<'_>, ds: &Dataset, indent: usize) -> fmt::Result {
    let pad = " ".repeat(indent);
    let names: Vec<String> = ds.names.iter().map(|n| py_repr(n)).collect();
    writeln!(f, "Dataset({{")?;
    writeln!(f, "{pad}    features: [{}],", names.join(", "))?;
    writeln!(f, "{pad}    num_rows: {}", ds.num_rows)?;
    write!(f, "{pad}}})")
}

/// Named splits of one dataset, in insertion order (train, validation, test for GLUE).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DatasetDict {
    splits: Vec<(String, Dataset)>,
}

impl DatasetDict {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a split.
    pub fn insert(&mut self, name: impl Into<String>, ds: Dataset) {
        let name = name.into();
        match self.splits.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = ds,
            None => self.splits.push((name, ds)),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Dataset> {
        self.splits.iter().find(|(n, _)| n == name).map(|(_, d)| d)
    }

    /// The split, or an error naming the splits there are.
    pub fn split(&self, name: &str) -> Result<&Dataset> {
        match self.get(name) {
            Some(d) => Ok(d),
            None => bail!("no split {name:?}; the splits are {:?}", self.split_names()),
        }
    }

    pub fn split_names(&self) -> Vec<&str> {
        self.splits.iter().map(|(n, _)| n.as_str()).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Dataset)> {
        self.splits.iter().map(|(n, d)| (n.as_str(), d))
    }

    pub fn is_empty(&self) -> bool {
        self.splits.is_empty()
    }
}

impl IntoIterator for DatasetDict {
    type Item = (String, Dataset);
    type IntoIter = std::vec::IntoIter<(String, Dataset)>;
    fn into_iter(self) -> Self::IntoIter {
        self.splits.into_iter()
    }
}

impl fmt::Display for DatasetDict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "DatasetDict({{")?;
        for (name, ds) in &self.splits {
            write!(f, "    {name}: ")?;
            fmt_dataset(f, ds, 4)?;
            writeln!(f)?;
        }
        write!(f, "}})")
    }
}

/// A string as Python's `repr` writes it: single quotes unless the text holds a `'` and no `"`.
pub fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Dataset {
        Dataset::new(vec![
            ("text".into(), Feature::Value(Dtype::String), Column::Str(vec!["a".into(), "it's".into()])),
            ("label".into(), Feature::ClassLabel { names: vec!["no".into(), "yes".into()] }, Column::Int(vec![1, 0])),
        ])
        .unwrap()
    }

    #[test]
    fn prints_like_hugging_face() {
        let mut dd = DatasetDict::new();
        dd.insert("train", tiny());
        let text = dd.to_string();
        assert_eq!(
            text,
            "DatasetDict({\n    train: Dataset({\n        features: ['text', 'label'],\n        num_rows: 2\n    })\n})"
        );
        assert_eq!(tiny().format_features(), "{'text': Value('string'), 'label': ClassLabel(names=['no', 'yes'])}");
        assert_eq!(tiny().format_row(1).unwrap(), "{'text': \"it's\", 'label': 0}");
    }

    #[test]
    fn rejects_inconsistent_columns() {
        let err = Dataset::new(vec![
            ("a".into(), Feature::Value(Dtype::Int64), Column::Int(vec![1])),
            ("b".into(), Feature::Value(Dtype::Int64), Column::Int(vec![1, 2])),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("\"b\" has 2 rows"), "{err}");
        let err =
            Dataset::new(vec![("l".into(), Feature::ClassLabel { names: vec!["x".into()] }, Column::Int(vec![3]))])
                .unwrap_err();
        assert!(err.to_string().contains("label 3"), "{err}");
    }

    #[test]
    fn fingerprint_follows_content() {
        let a = tiny();
        let b = tiny();
        assert_eq!(a.fingerprint(), b.fingerprint());
        let c = a.select(&[1, 0]).unwrap();
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn features_round_trip_through_encode() {
        for f in [
            Feature::Value(Dtype::Int32),
            Feature::List(Dtype::Int8),
            Feature::ClassLabel { names: vec!["a\"b".into(), "c".into()] },
        ] {
            assert_eq!(Feature::parse(&f.encode()), Some(f));
        }
    }
}
