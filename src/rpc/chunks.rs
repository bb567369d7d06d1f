//! Tensor bytes on the wire, with as few copies as the transport allows: splitting one buffer
//! into the chunks a stream sends ([`split`], reference-counted slices of a [`Bytes`], no copy)
//! and assembling received chunks straight into a tensor's final typed buffer ([`Assembly`],
//! one copy per byte, preallocated to the declared size). Server and client both use them.

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::tensor::{HostData, HostTensor, Tensor, TensorDesc};

/// Owned host data as a shared byte buffer, without a copy (the buffer keeps the data alive).
pub fn host_bytes(data: HostData) -> Bytes {
    Bytes::from_owner(data)
}

/// `bytes` as chunks of at most `chunk` bytes (at least 1), each a slice of `bytes` (no copy).
/// Empty data is one empty chunk, so a stream always has a first message to carry its header.
pub fn split(bytes: Bytes, chunk: usize) -> impl Iterator<Item = Bytes> + Send + 'static {
    let chunk = chunk.max(1);
    let n = bytes.len().div_ceil(chunk).max(1);
    (0..n).map(move |i| {
        let start = (i * chunk).min(bytes.len());
        let end = (start + chunk).min(bytes.len());
        bytes.slice(start..end)
    })
}

/// A tensor being received in chunks, written straight into its final buffer.
pub struct Assembly {
    desc: TensorDesc,
    data: HostData,
    /// Bytes received so far, including any past the end (which are counted, not kept).
    received: usize,
}

impl Assembly {
    /// An empty tensor of `desc` to fill; `None` if its memory cannot be had.
    pub fn new(desc: TensorDesc) -> Option<Self> {
        let data = HostData::try_zeroed(desc.dtype(), desc.len())?;
        Some(Assembly {
            desc,
            data,
            received: 0,
        })
    }

    /// The tensor being received.
    pub fn desc(&self) -> &TensorDesc {
        &self.desc
    }

    /// Bytes received so far.
    pub fn received(&self) -> usize {
        self.received
    }

    /// Appends a chunk. Returns false (keeping nothing of it, but counting it) if it runs past
    /// the tensor's size.
    pub fn push(&mut self, chunk: &[u8]) -> bool {
        let start = self.received;
        self.received = start.saturating_add(chunk.len());
        match self.data.as_bytes_mut().get_mut(start..self.received) {
            Some(dst) => {
                dst.copy_from_slice(chunk);
                true
            }
            None => false,
        }
    }

    /// The tensor, once exactly its size was received ([`Error::ByteLength`] otherwise).
    pub fn finish(self) -> Result<HostTensor> {
        if self.received != self.desc.bytes() {
            return Err(Error::ByteLength {
                dtype: self.desc.dtype(),
                shape: self.desc.shape().to_vec(),
                expected: self.desc.bytes(),
                got: self.received,
            });
        }
        Ok(Tensor::from_parts(self.desc, self.data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;

    #[test]
    fn split_slices_one_buffer() {
        let b = Bytes::from((0u8..10).collect::<Vec<_>>());
        let chunks: Vec<Bytes> = split(b.clone(), 4).collect();
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks.concat(), b.to_vec());
        // No copies: every chunk points into the original buffer.
        assert_eq!(chunks[1].as_ptr(), b[4..].as_ptr());
        assert_eq!(
            split(Bytes::new(), 4).collect::<Vec<_>>(),
            vec![Bytes::new()]
        );
        assert_eq!(split(b, 0).count(), 10);
    }

    #[test]
    fn assembly_fills_the_typed_buffer_and_checks_the_length() {
        let want = HostTensor::from_f32(DType::F16, &[3, 3], &[1.5; 9]).unwrap();
        let mut a = Assembly::new(want.desc().clone()).unwrap();
        for c in want.as_bytes().chunks(5) {
            assert!(a.push(c));
        }
        assert_eq!(a.finish().unwrap(), want);

        let mut short = Assembly::new(want.desc().clone()).unwrap();
        assert!(short.push(&[0; 17]));
        let e = short.finish().unwrap_err();
        assert!(
            matches!(
                e,
                Error::ByteLength {
                    expected: 18,
                    got: 17,
                    ..
                }
            ),
            "{e}"
        );

        let mut long = Assembly::new(want.desc().clone()).unwrap();
        assert!(long.push(&[0; 10]));
        assert!(!long.push(&[0; 9]));
        assert_eq!(long.received(), 19);
        let e = long.finish().unwrap_err();
        assert!(
            matches!(
                e,
                Error::ByteLength {
                    expected: 18,
                    got: 19,
                    ..
                }
            ),
            "{e}"
        );
    }
}
