//! Self-checking file contents: a body and a trailer that names it, so a torn or mixed file is
//! always detected.

/// `len` bytes of body derived from `tag`, then a 24-byte trailer: tag, body length, and the
/// first 8 bytes of BLAKE3(body).
pub fn content(tag: u64, len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(tag);
    let mut bytes = vec![0u8; len];
    rng.fill(&mut bytes);
    let digest = blake3::hash(&bytes);
    bytes.extend_from_slice(&tag.to_le_bytes());
    bytes.extend_from_slice(&(len as u64).to_le_bytes());
    bytes.extend_from_slice(&digest.as_bytes()[..8]);
    bytes
}

/// The tag of a complete content; `None` for anything torn, truncated or mixed.
pub fn check_content(bytes: &[u8]) -> Option<u64> {
    let body_len = bytes.len().checked_sub(24)?;
    let (body, trailer) = bytes.split_at(body_len);
    let tag = u64::from_le_bytes(trailer[..8].try_into().ok()?);
    let len = u64::from_le_bytes(trailer[8..16].try_into().ok()?);
    (len == body_len as u64 && trailer[16..] == blake3::hash(body).as_bytes()[..8]).then_some(tag)
}

/// Every regular file under `root` outside the store's own `.vbus*` directories, as
/// `dataset/path`.
pub fn files_on_disk(root: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![(root.to_owned(), String::new())];
    while let Some((dir, prefix)) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            if prefix.is_empty() && name.starts_with(".vbus") {
                continue;
            }
            let relative = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            if entry.file_type().unwrap().is_dir() {
                pending.push((entry.path(), relative));
            } else {
                found.push(relative);
            }
        }
    }
    found.sort();
    found
}

#[test]
fn content_detects_damage() {
    let bytes = content(7, 100);
    assert_eq!(check_content(&bytes), Some(7));
    assert_eq!(check_content(&bytes[..bytes.len() - 1]), None);
    let mut flipped = bytes.clone();
    flipped[3] ^= 1;
    assert_eq!(check_content(&flipped), None);
    assert_eq!(check_content(&content(9, 0)), Some(9));
}
