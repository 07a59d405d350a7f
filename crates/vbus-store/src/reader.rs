//! `FileReader`: Read + Seek over one version of a file.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

use crate::store::FileMeta;

/// Reads the version of a file that was current when it was opened; a later publish or removal
/// of the same path does not change what it reads.
#[derive(Debug)]
pub struct FileReader {
    file: File,
    meta: FileMeta,
}

impl FileReader {
    pub(crate) fn new(file: File, meta: FileMeta) -> Self {
        Self { file, meta }
    }

    /// The metadata of the version being read.
    pub fn meta(&self) -> &FileMeta {
        &self.meta
    }
}

impl Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

impl Seek for FileReader {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.file.seek(pos)
    }
}
