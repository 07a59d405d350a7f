//! The S3-compatible origin, through `object_store`: a bucket, optionally under a prefix, holding
//! `{dataset}/{path}` objects and the versions recorded under `.vbus/manifests/{dataset}/`.
//!
//! The BUS is synchronous (threads, not tasks), so the origin owns a small Tokio runtime and
//! blocks on each call; calls from many pull workers run at once on it.

use std::path::PathBuf;

use futures_util::TryStreamExt as _;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{MultipartUpload as _, ObjectStore as _, ObjectStoreExt as _, PutPayload};

use crate::manifest::ManifestError;
use crate::origin::{Backend, Object};

/// How to reach an S3-compatible store. Unset fields come from the standard `AWS_*`
/// environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
/// `AWS_ENDPOINT_URL`, …), as every S3 client reads them.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// The endpoint (`http://127.0.0.1:9000` for a local server); empty means AWS itself or
    /// `AWS_ENDPOINT_URL`. An `http://` endpoint allows plain HTTP.
    pub endpoint: String,
    /// The region; empty means `AWS_REGION`, else `us-east-1`.
    pub region: String,
}

/// Objects above this size are written back in parts of this size.
const PART_BYTES: u64 = 16 << 20;

pub(crate) struct S3Backend {
    url: String,
    store: AmazonS3,
    prefix: String,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Backend").field("url", &self.url).finish()
    }
}

fn invalid(why: String) -> ManifestError {
    ManifestError::Invalid(why)
}

impl S3Backend {
    pub(crate) fn new(url: &str, options: &S3Options) -> Result<Self, ManifestError> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| invalid(format!("{url:?} is not an s3:// URL")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid(format!("{url:?} names no bucket")));
        }
        let prefix = prefix.trim_matches('/').to_owned();
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if !options.endpoint.is_empty() {
            builder = builder
                .with_endpoint(&options.endpoint)
                .with_allow_http(options.endpoint.starts_with("http://"));
        } else if std::env::var("AWS_ENDPOINT_URL")
            .or_else(|_| std::env::var("AWS_ENDPOINT"))
            .is_ok_and(|endpoint| endpoint.starts_with("http://"))
        {
            builder = builder.with_allow_http(true);
        }
        if !options.region.is_empty() {
            builder = builder.with_region(&options.region);
        }
        let store = builder
            .build()
            .map_err(|err| invalid(format!("cannot use {url}: {err}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("vbus-s3")
            .enable_all()
            .build()
            .map_err(|source| ManifestError::Io {
                op: "start a runtime for",
                path: PathBuf::from(url),
                source,
            })?;
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            store,
            prefix,
            runtime,
        })
    }

    fn location(&self, key: &str) -> Result<ObjectPath, ManifestError> {
        let full = if self.prefix.is_empty() {
            key.to_owned()
        } else if key.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}/{key}", self.prefix)
        };
        ObjectPath::parse(&full).map_err(|err| invalid(format!("bad object key {full:?}: {err}")))
    }

    /// An `object_store` error as the origin's error: `NotFound` kept as such (a missing
    /// dataset or version), naming the object.
    fn error(&self, op: &'static str, key: &str, err: object_store::Error) -> ManifestError {
        let kind = match err {
            object_store::Error::NotFound { .. } => std::io::ErrorKind::NotFound,
            _ => std::io::ErrorKind::Other,
        };
        ManifestError::Io {
            op,
            path: PathBuf::from(format!("{}/{key}", self.url)),
            source: std::io::Error::new(kind, err.to_string()),
        }
    }
}

impl Backend for S3Backend {
    fn describe(&self) -> String {
        self.url.clone()
    }

    fn list(&self, dir: &str) -> Result<Vec<Object>, ManifestError> {
        let base = self.location(dir.trim_end_matches('/'))?;
        let objects: Vec<object_store::ObjectMeta> = self
            .runtime
            .block_on(self.store.list(Some(&base)).try_collect())
            .map_err(|err| self.error("list", dir, err))?;
        let mut out: Vec<Object> = objects
            .into_iter()
            .filter_map(|meta| {
                let parts: Vec<String> = meta
                    .location
                    .prefix_match(&base)?
                    .map(|part| part.as_ref().to_owned())
                    .collect();
                let hidden = parts.iter().any(|part| part.starts_with('.'));
                (!parts.is_empty() && !hidden).then(|| Object {
                    path: parts.join("/"),
                    size_bytes: meta.size,
                    stamp: meta
                        .e_tag
                        .clone()
                        .unwrap_or_else(|| meta.last_modified.to_rfc3339()),
                })
            })
            .collect();
        if out.is_empty() {
            // As a directory origin answers for a dataset it does not have.
            return Err(ManifestError::Io {
                op: "list",
                path: PathBuf::from(format!("{}/{dir}", self.url)),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no objects"),
            });
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    fn read_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, ManifestError> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let location = self.location(key)?;
        let bytes = self
            .runtime
            .block_on(self.store.get_range(&location, offset..offset + len))
            .map_err(|err| self.error("read", key, err))?;
        if bytes.len() as u64 != len {
            return Err(ManifestError::Io {
                op: "read",
                path: PathBuf::from(format!("{}/{key}", self.url)),
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("{} bytes at {offset}, not {len}", bytes.len()),
                ),
            });
        }
        // No copy when the client's buffer is this answer's alone.
        Ok(Vec::from(bytes))
    }

    fn read(&self, key: &str) -> Result<Option<Vec<u8>>, ManifestError> {
        let location = self.location(key)?;
        let result = self.runtime.block_on(async {
            let got = self.store.get(&location).await?;
            got.bytes().await
        });
        match result {
            Ok(bytes) => Ok(Some(Vec::from(bytes))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(self.error("read", key, err)),
        }
    }

    fn write_from(
        &self,
        key: &str,
        file: &mut dyn std::io::Read,
        size: u64,
    ) -> Result<(), ManifestError> {
        let local = |op: &'static str| {
            let path = PathBuf::from(format!("the local copy of {key}"));
            move |source| ManifestError::Io { op, path, source }
        };
        if size <= PART_BYTES {
            let mut bytes = vec![0u8; size as usize];
            file.read_exact(&mut bytes).map_err(local("read"))?;
            return self.write(key, &bytes);
        }
        // Large: a multipart upload, one part in memory at a time; S3 makes the object
        // visible only at `complete`, whole.
        let location = self.location(key)?;
        self.runtime.block_on(async {
            let mut upload = self
                .store
                .put_multipart(&location)
                .await
                .map_err(|err| self.error("start an upload of", key, err))?;
            let mut sent = 0;
            while sent < size {
                let mut part = vec![0u8; PART_BYTES.min(size - sent) as usize];
                if let Err(err) = file.read_exact(&mut part) {
                    let _ = upload.abort().await;
                    return Err(local("read")(err));
                }
                sent += part.len() as u64;
                if let Err(err) = upload.put_part(PutPayload::from(part)).await {
                    let _ = upload.abort().await;
                    return Err(self.error("upload a part of", key, err));
                }
            }
            upload
                .complete()
                .await
                .map_err(|err| self.error("complete the upload of", key, err))?;
            Ok(())
        })
    }

    fn write(&self, key: &str, bytes: &[u8]) -> Result<(), ManifestError> {
        let location = self.location(key)?;
        self.runtime
            .block_on(self.store.put(&location, PutPayload::from(bytes.to_vec())))
            .map_err(|err| self.error("write", key, err))?;
        Ok(())
    }
}
