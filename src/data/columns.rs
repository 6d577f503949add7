//! ColumnMapping: which columns of a raw table are the texts and the label, and how labels become
//! class ids (or, for regression, numbers). Every bad value is reported with its file and line.

use super::dataset::{Column, Dataset, Dtype, Feature};
use super::table::{RawRow, RawTable, RawValue};
use crate::{Error, Result};

/// How a raw table becomes a classification dataset with columns `<texts...>, label, idx`.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnMapping {
    /// `(dataset column, file column)` for each text, one or two.
    pub text: Vec<(String, String)>,
    /// The file column holding the label.
    pub label: String,
    /// The class names; a label is a name from this list or an index into it. Empty for regression.
    pub label_names: Vec<String>,
    /// The label is a number to predict (STS-B's score): a float column, NaN where a row has none.
    pub regression: bool,
}

/// Whether rows of a split must carry a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Labels {
    /// Every row has a valid label.
    Required,
    /// A split without the label column is unlabelled (label -1), as GLUE's test splits are.
    Optional,
}

impl ColumnMapping {
    /// Maps `rows` of `table` into a dataset; `idx` is each row's position in its file.
    pub fn to_dataset<'a>(
        &self,
        table: &RawTable,
        rows: impl IntoIterator<Item = &'a RawRow>,
        labels: Labels,
    ) -> Result<Dataset> {
        let text_cols: Vec<usize> = self.text.iter().map(|(_, src)| table.column(src)).collect::<Result<_>>()?;
        let label_col = match (table.column(&self.label), labels) {
            (Ok(i), _) => Some(i),
            (Err(_), Labels::Optional) => None,
            (Err(e), Labels::Required) => return Err(e),
        };
        let mut texts: Vec<Vec<String>> = vec![Vec::new(); text_cols.len()];
        let mut label_ids = Vec::new();
        let mut targets = Vec::new();
        let mut idx = Vec::new();
        for row in rows {
            for (out, &col) in texts.iter_mut().zip(&text_cols) {
                match &row.values[col] {
                    RawValue::Str(s) => out.push(s.clone()),
                    other => {
                        return Err(table.error_at(
                            row,
                            format!("column {:?}: expected text, found {}", table.columns[col], other.describe()),
                        ))
                    }
                }
            }
            if self.regression {
                let target = match label_col {
                    Some(col) => target(&row.values[col], labels).map_err(|m| table.error_at(row, m))?,
                    None => f64::NAN,
                };
                targets.push(target);
            } else {
                let label = match label_col {
                    Some(col) => self.label_id(&row.values[col], labels).map_err(|m| table.error_at(row, m))?,
                    None => -1,
                };
                label_ids.push(label);
            }
            idx.push(row.index as i64);
        }
        if idx.is_empty() {
            return Err(Error::data(&table.path, None, "the split is empty: no data rows after the header"));
        }
        let mut columns: Vec<(String, Feature, Column)> = self
            .text
            .iter()
            .zip(texts)
            .map(|((name, _), values)| (name.clone(), Feature::Value(Dtype::String), Column::Str(values)))
            .collect();
        columns.push(match self.regression {
            true => ("label".into(), Feature::Value(Dtype::Float32), Column::Float(targets)),
            false => ("label".into(), Feature::ClassLabel { names: self.label_names.clone() }, Column::Int(label_ids)),
        });
        columns.push(("idx".into(), Feature::Value(Dtype::Int32), Column::Int(idx)));
        Dataset::new(columns)
    }

    /// The class id of a raw label: a label name, or an integer index into the names; -1 (no
    /// label) where labels are optional.
    fn label_id(&self, value: &RawValue, labels: Labels) -> std::result::Result<i64, String> {
        let n = self.label_names.len() as i64;
        let index = match value {
            RawValue::Str(s) => {
                if let Some(i) = self.label_names.iter().position(|name| name == s.trim()) {
                    return Ok(i as i64);
                }
                s.trim().parse::<i64>().ok()
            }
            RawValue::Int(i) => Some(*i),
            RawValue::Bool(b) => Some(*b as i64),
            RawValue::Float(f) if f.fract() == 0.0 => Some(*f as i64),
            _ => None,
        };
        match index {
            Some(i) if (0..n).contains(&i) => Ok(i),
            Some(-1) if labels == Labels::Optional => Ok(-1),
            _ => Err(format!(
                "label {} is outside the label set {:?} (a name from it, or an index 0..{})",
                value.describe(),
                self.label_names,
                n.saturating_sub(1)
            )),
        }
    }
}

/// A regression target: a number; NaN (no label) for an empty field where labels are optional.
fn target(value: &RawValue, labels: Labels) -> std::result::Result<f64, String> {
    let number = match value {
        RawValue::Float(f) => Some(*f),
        RawValue::Int(i) => Some(*i as f64),
        RawValue::Str(s) if s.trim().is_empty() && labels == Labels::Optional => return Ok(f64::NAN),
        RawValue::Str(s) => s.trim().parse::<f64>().ok(),
        RawValue::Null if labels == Labels::Optional => return Ok(f64::NAN),
        _ => None,
    };
    number
        .filter(|v| v.is_finite())
        .ok_or_else(|| format!("label {} is not a number (this is a regression task)", value.describe()))
}

/// Whether a label column holds numbers that are not all integers, which makes the task a
/// regression, as `run_glue` decides from a float label column.
pub fn is_float_column(table: &RawTable, label_column: &str) -> Result<bool> {
    let col = table.column(label_column)?;
    let mut any_float = false;
    for row in &table.rows {
        match &row.values[col] {
            RawValue::Float(_) => any_float = true,
            RawValue::Int(_) => {}
            RawValue::Str(s) if s.trim().parse::<i64>().is_ok() => {}
            RawValue::Str(s) if s.trim().parse::<f64>().is_ok_and(f64::is_finite) => any_float = true,
            _ => return Ok(false),
        }
    }
    Ok(any_float)
}

/// The label names of a split, inferred as Hugging Face's `run_glue` does: the sorted distinct
/// values of the label column (numerically when all are integers).
pub fn infer_label_names(table: &RawTable, label_column: &str) -> Result<Vec<String>> {
    let col = table.column(label_column)?;
    let mut values: Vec<String> = Vec::new();
    for row in &table.rows {
        let text = match &row.values[col] {
            RawValue::Str(s) => s.trim().to_string(),
            RawValue::Int(i) => i.to_string(),
            RawValue::Bool(b) => b.to_string(),
            other => {
                return Err(
                    table.error_at(row, format!("column {label_column:?}: cannot use {} as a label", other.describe()))
                )
            }
        };
        if text.is_empty() {
            return Err(table.error_at(row, format!("column {label_column:?}: empty label")));
        }
        if !values.contains(&text) {
            values.push(text);
        }
    }
    if values.iter().all(|v| v.parse::<i64>().is_ok()) {
        values.sort_by_key(|v| v.parse::<i64>().unwrap_or_default());
    } else {
        values.sort();
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FileFormat;

    fn table(text: &str) -> (tempfile::TempDir, RawTable) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.csv");
        std::fs::write(&p, text).unwrap();
        let t = RawTable::read(&p, FileFormat::Csv).unwrap();
        (d, t)
    }

    fn mapping(names: &[&str]) -> ColumnMapping {
        ColumnMapping {
            text: vec![("sentence".into(), "text".into())],
            label: "y".into(),
            label_names: names.iter().map(|s| s.to_string()).collect(),
            regression: false,
        }
    }

    #[test]
    fn labels_are_names_or_indices() {
        let (_d, t) = table("text,y\na,pos\nb,0\nc,1\n");
        let ds = mapping(&["neg", "pos"]).to_dataset(&t, &t.rows, Labels::Required).unwrap();
        assert_eq!(ds.ints("label").unwrap(), [1, 0, 1]);
        assert_eq!(ds.ints("idx").unwrap(), [0, 1, 2]);
        assert_eq!(ds.column_names(), ["sentence", "label", "idx"]);
    }

    #[test]
    fn a_label_outside_the_set_names_file_and_line() {
        let (_d, t) = table("text,y\na,pos\nb,maybe\n");
        let err = mapping(&["neg", "pos"]).to_dataset(&t, &t.rows, Labels::Required).unwrap_err().to_string();
        assert!(err.contains("t.csv:3") && err.contains("\"maybe\"") && err.contains("outside the label set"), "{err}");
        let (_d, t) = table("text,y\na,2\n");
        assert!(mapping(&["neg", "pos"]).to_dataset(&t, &t.rows, Labels::Required).is_err());
    }

    #[test]
    fn missing_columns_and_empty_splits_are_errors() {
        let (_d, t) = table("words,y\na,0\n");
        let err = mapping(&["a", "b"]).to_dataset(&t, &t.rows, Labels::Required).unwrap_err().to_string();
        assert!(err.contains("missing column \"text\"") && err.contains("words"), "{err}");
        let (_d, t) = table("text,y\n");
        let err = mapping(&["a", "b"]).to_dataset(&t, &t.rows, Labels::Required).unwrap_err().to_string();
        assert!(err.contains("t.csv") && err.contains("empty"), "{err}");
        let (_d, t) = table("text\nx\n");
        let ds = mapping(&["a", "b"]).to_dataset(&t, &t.rows, Labels::Optional).unwrap();
        assert_eq!(ds.ints("label").unwrap(), [-1]);
    }

    #[test]
    fn regression_labels_are_numbers_and_a_float_column_makes_a_regression() {
        let (_d, t) = table("text,y\na,3.8\nb,0\nc,\n");
        assert!(is_float_column(&t, "y").is_ok_and(|f| !f), "an empty label is not a number");
        let (_d, t) = table("text,y\na,3.8\nb,0\n");
        assert!(is_float_column(&t, "y").unwrap());
        let (_d, ints) = table("text,y\na,3\nb,0\n");
        assert!(!is_float_column(&ints, "y").unwrap(), "integers are classes, as in run_glue");
        let m = ColumnMapping { regression: true, ..mapping(&[]) };
        let ds = m.to_dataset(&t, &t.rows, Labels::Required).unwrap();
        assert_eq!(ds.floats("label").unwrap(), [3.8, 0.0]);
        assert!(ds.format_features().contains("float32"), "{}", ds.format_features());
        let (_d, bad) = table("text,y\na,high\n");
        let err = m.to_dataset(&bad, &bad.rows, Labels::Required).unwrap_err().to_string();
        assert!(err.contains("t.csv:2") && err.contains("not a number"), "{err}");
        let (_d, unlabelled) = table("text\nx\n");
        assert!(
            m.to_dataset(&unlabelled, &unlabelled.rows, Labels::Optional).unwrap().floats("label").unwrap()[0].is_nan()
        );
    }

    #[test]
    fn inferred_label_names_sort_like_run_glue() {
        let (_d, t) = table("text,y\na,10\nb,2\nc,10\n");
        assert_eq!(infer_label_names(&t, "y").unwrap(), ["2", "10"]);
        let (_d, t) = table("text,y\na,pos\nb,neg\n");
        assert_eq!(infer_label_names(&t, "y").unwrap(), ["neg", "pos"]);
    }
}
