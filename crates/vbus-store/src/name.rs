//! Dataset and path names: what the store accepts, and the key it files them under.

use crate::{Error, Result};

/// Longest dataset name, in bytes.
pub const DATASET_LEN_MAX: usize = 255;
/// Longest path inside a dataset, in bytes.
pub const PATH_LEN_MAX: usize = 4096;
/// Longest single path segment, in bytes (the usual file-name limit).
pub const SEGMENT_LEN_MAX: usize = 255;
/// Names that begin with this are the store's own (staging, index, quarantine).
pub const RESERVED_PREFIX: &str = ".vbus";

/// Checks a dataset name: one path segment.
pub fn validate_dataset(dataset: &str) -> Result<()> {
    let refuse = |reason: &str| Error::InvalidName {
        what: "dataset",
        name: dataset.to_owned(),
        reason: reason.to_owned(),
    };
    if dataset.len() > DATASET_LEN_MAX {
        return Err(refuse(&format!("longer than {DATASET_LEN_MAX} bytes")));
    }
    if dataset.contains('/') {
        return Err(refuse("a dataset is one name and may not contain '/'"));
    }
    check_segment(dataset).map_err(|reason| refuse(&reason))
}

/// Checks a path inside a dataset: relative, `/`-separated, no empty, `.` or `..` segments.
pub fn validate_path(path: &str) -> Result<()> {
    let refuse = |reason: &str| Error::InvalidName {
        what: "path",
        name: path.to_owned(),
        reason: reason.to_owned(),
    };
    if path.len() > PATH_LEN_MAX {
        return Err(refuse(&format!("longer than {PATH_LEN_MAX} bytes")));
    }
    if path.starts_with('/') {
        return Err(refuse(
            "absolute paths are not allowed; give a path relative to the dataset",
        ));
    }
    for segment in path.split('/') {
        check_segment(segment).map_err(|reason| refuse(&reason))?;
    }
    Ok(())
}

fn check_segment(segment: &str) -> Result<(), String> {
    match segment {
        "" => Err("empty segment (leading, trailing or doubled '/')".to_owned()),
        "." | ".." => Err(format!("'{segment}' segments are not allowed")),
        _ if segment.len() > SEGMENT_LEN_MAX => {
            Err(format!("a segment is longer than {SEGMENT_LEN_MAX} bytes"))
        }
        _ if segment.contains('\0') => Err("contains NUL".to_owned()),
        _ if segment.contains('\\') => {
            Err("contains '\\'; use '/' to separate segments".to_owned())
        }
        _ if segment.chars().any(char::is_control) => {
            Err("contains a control character".to_owned())
        }
        _ if segment.starts_with(RESERVED_PREFIX) => Err(format!(
            "names beginning with {RESERVED_PREFIX:?} are reserved for the store"
        )),
        _ => Ok(()),
    }
}

/// The index key of a file: `dataset/path`, both validated.
pub(crate) fn key(dataset: &str, path: &str) -> Result<String> {
    validate_dataset(dataset)?;
    validate_path(path)?;
    Ok(format!("{dataset}/{path}"))
}

/// Splits a key back into dataset and path.
pub(crate) fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or((key, ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(dataset: &str, path: &str, fragment: &str) {
        let err = key(dataset, path).expect_err(&format!("{dataset:?} {path:?} accepted"));
        let message = err.to_string();
        assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
    }

    #[test]
    fn good_names_are_accepted() {
        assert_eq!(
            key("llama-7b", "model.safetensors").unwrap(),
            "llama-7b/model.safetensors"
        );
        assert_eq!(key("d", "a/b/c.bin").unwrap(), "d/a/b/c.bin");
        assert_eq!(key("d", ".hidden/x..y").unwrap(), "d/.hidden/x..y");
        assert_eq!(split_key("d/a/b"), ("d", "a/b"));
    }

    #[test]
    fn bad_names_are_refused_with_the_reason() {
        refused("", "x", "empty segment");
        refused("a/b", "x", "may not contain '/'");
        refused("..", "x", "'..' segments");
        refused(".", "x", "'.' segments");
        refused("d", "", "empty segment");
        refused("d", "/etc/passwd", "absolute paths");
        refused("d", "a/../../etc", "'..' segments");
        refused("d", "a//b", "empty segment");
        refused("d", "a/", "empty segment");
        refused("d", "a\0b", "NUL");
        refused("d", "a\\b", "contains '\\'");
        refused("d", "a\nb", "control character");
        refused(".vbus-staging", "x", "reserved");
        refused("d", "x/.vbus-index", "reserved");
        refused(&"d".repeat(256), "x", "longer than 255 bytes");
        refused("d", &"p/".repeat(2100), "longer than 4096 bytes");
        refused("d", &"p".repeat(256), "segment is longer than 255");
    }
}
