//! The CPU backend's storage, [`CpuData`]: a tensor's host data and the forms derived from it
//! that are cached with it. What an op computes from a constant operand on every call — FP16
//! weights widened to FP32 today, packed GEMM panels when a kernel packs them — is built once
//! and reused for as long as the data is unchanged, as inference reuses its weights.
//!
//! - **Keyed**: a form is looked up by its [`Key`], a kind and the plan parameters the form
//!   depends on (none for a widened copy; a packed form names its blocking).
//! - **Invalidated structurally**: the data is reachable mutably only through
//!   [`CpuData::data_mut`], which drops every form first, so a write, an upload into the tensor
//!   or being an op's output can never leave a stale form behind.
//! - **Built on the second read since the last write**, so data read once per write (an
//!   activation) never pays for a cache; **uploaded data on its first read** ([`CpuData::uploaded`]):
//!   weights arrive by upload and are read by every inference, so a model's first inference,
//!   not its second, packs them.
//! - **Thread-safe without waiting**: the cache's lock is held only to look up or record a form,
//!   never while one is built. A form is built once, by the op that found it missing; an op that
//!   wants it while it is being built computes without it (no thread of the pool ever waits on
//!   another's build, so none can deadlock on one).
//! - **Charged**: a form's bytes are charged to the backend's [`MemoryAccount`] (an
//!   accelerator's memory quota) *before* it is built; a refusal means computing without the
//!   cache, never an error. Dropping the tensor, writing it or [`CpuData::drop_derived`] (an
//!   accelerator making room for a tensor) releases them.

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, Mutex};

use super::blocked::Blocked;
use crate::backend::MemoryAccount;
use crate::sync::lock;
use crate::tensor::{HostData, Tensor};

/// Which derived form: its kind and the plan parameters it depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    kind: &'static str,
    params: Vec<usize>,
}

impl Key {
    /// The form `kind` built for `params` (e.g. a packing's block sizes).
    pub fn new(kind: &'static str, params: &[usize]) -> Self {
        Key {
            kind,
            params: params.to_vec(),
        }
    }
}

/// A tensor's data on the CPU backend and the forms derived from it (see the module doc). It
/// reads as its [`HostData`] (`Deref`).
pub struct CpuData {
    data: HostData,
    cache: Mutex<Cache>,
    /// Whether `data` is in the blocked layout, and its shape then (see [`super::blocked`]):
    /// set by the op that writes it so, cleared by every other write.
    blocked: Option<Blocked>,
    /// Whether the next op that writes the data may leave it blocked.
    want_blocked: bool,
}

#[derive(Default)]
struct Cache {
    /// Reads of the data (for a derived form) since it was last written.
    reads: u32,
    forms: Vec<(Key, Slot)>,
}

enum Slot {
    /// One op is building it.
    Building,
    Built {
        form: Arc<dyn Any + Send + Sync>,
        charge: Charge,
    },
}

/// Bytes charged to an account (none: a bare backend), given back when dropped.
struct Charge {
    account: Option<Arc<dyn MemoryAccount>>,
    bytes: u64,
}

impl Charge {
    /// `bytes` charged to `account`, or `None` if it refuses them.
    fn new(account: Option<&Arc<dyn MemoryAccount>>, bytes: usize) -> Option<Self> {
        let bytes = bytes as u64;
        if let Some(account) = account {
            if !account.try_charge(bytes) {
                return None;
            }
        }
        Some(Charge {
            account: account.cloned(),
            bytes,
        })
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some(account) = &self.account {
            account.release(self.bytes);
        }
    }
}

impl CpuData {
    /// The data, with no derived forms yet.
    pub fn new(data: HostData) -> Self {
        CpuData {
            data,
            cache: Mutex::default(),
            blocked: None,
            want_blocked: false,
        }
    }

    /// Data a client uploaded, with no derived forms yet: counted as read once already, so an
    /// op builds its forms on its first read (see the module doc).
    pub fn uploaded(data: HostData) -> Self {
        CpuData {
            data,
            cache: Mutex::new(Cache {
                reads: 1,
                forms: Vec::new(),
            }),
            blocked: None,
            want_blocked: false,
        }
    }

    /// The data as stored: planar, but for a program's scratch tensor that the program left
    /// blocked ([`CpuData::blocked`]; [`CpuData::planar`] reads either).
    pub fn data(&self) -> &HostData {
        &self.data
    }

    /// The data, to be written: drops every derived form first (the only way to the data
    /// mutably, so no form outlives the data it was derived from), and the data is planar
    /// until [`CpuData::set_blocked`] says otherwise.
    pub fn data_mut(&mut self) -> &mut HostData {
        *self.cache.get_mut().unwrap_or_else(|e| e.into_inner()) = Cache::default();
        self.blocked = None;
        &mut self.data
    }

    /// Whether the data is blocked, and its shape then.
    pub fn blocked(&self) -> Option<Blocked> {
        self.blocked
    }

    /// Records that the data just written is blocked (`b`) or planar (`None`).
    pub fn set_blocked(&mut self, b: Option<Blocked>) {
        self.blocked = b;
    }

    /// Lets the next op that writes the data leave it blocked.
    pub fn want_blocked(&mut self) {
        self.want_blocked = true;
    }

    /// Whether the op about to write the data may leave it blocked (asked once: the next op
    /// after this one writes it planar unless asked again).
    pub fn take_want_blocked(&mut self) -> bool {
        std::mem::take(&mut self.want_blocked)
    }

    /// The data in the planar layout: itself, or a planar copy of blocked data.
    pub fn planar(&self) -> Cow<'_, HostData> {
        match self.blocked {
            Some(b) => Cow::Owned(super::blocked::to_planar(&self.data, b)),
            None => Cow::Borrowed(&self.data),
        }
    }

    /// Drops the derived forms built so far (an op using one keeps its copy until it ends), to
    /// be built again on a later read.
    pub fn drop_derived(&self) {
        lock(&self.cache).forms.clear();
    }

    /// The data (planar), its derived forms dropped.
    pub fn into_data(self) -> HostData {
        match self.blocked {
            Some(b) => super::blocked::to_planar(&self.data, b),
            None => self.data,
        }
    }

    /// Bytes held by the derived forms built so far.
    pub fn derived_bytes(&self) -> u64 {
        lock(&self.cache)
            .forms
            .iter()
            .map(|(_, slot)| match slot {
                Slot::Built { charge, .. } => charge.bytes,
                Slot::Building => 0,
            })
            .sum()
    }

    /// The form `key` of the data: the cached one, else — on the second read since the last
    /// write (the first of uploaded data), if `account` takes its `bytes` and no other op is building it — built now by
    /// `build` and cached. `None`: the caller computes without it this time.
    pub fn derived<T: Any + Send + Sync>(
        &self,
        key: &Key,
        bytes: usize,
        account: Option<&Arc<dyn MemoryAccount>>,
        build: impl FnOnce(&HostData) -> T,
    ) -> Option<Arc<T>> {
        let charge = {
            let mut cache = lock(&self.cache);
            match cache.forms.iter().find(|(k, _)| k == key) {
                Some((_, Slot::Built { form, .. })) => return form.clone().downcast().ok(),
                Some((_, Slot::Building)) => return None,
                None => {}
            }
            cache.reads = cache.reads.saturating_add(1);
            if cache.reads < 2 {
                return None;
            }
            let charge = Charge::new(account, bytes)?;
            cache.forms.push((key.clone(), Slot::Building));
            charge
        };
        // Built with no lock held. The data cannot change meanwhile: `&self` is borrowed.
        let form = Arc::new(build(&self.data));
        let mut cache = lock(&self.cache);
        if let Some((_, slot)) = cache.forms.iter_mut().find(|(k, _)| k == key) {
            *slot = Slot::Built {
                form: form.clone(),
                charge,
            };
        }
        Some(form)
    }
}

impl Deref for CpuData {
    type Target = HostData;

    fn deref(&self) -> &HostData {
        &self.data
    }
}

impl From<HostData> for CpuData {
    fn from(data: HostData) -> Self {
        CpuData::new(data)
    }
}

/// A copy of the data (planar), without the derived forms.
impl Clone for CpuData {
    fn clone(&self) -> Self {
        CpuData::new(self.planar().into_owned())
    }
}

impl fmt::Debug for CpuData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpuData")
            .field("data", &self.data)
            .field("derived_bytes", &self.derived_bytes())
            .finish()
    }
}

/// Equal when the data are, as planar values (derived forms are a cache).
impl PartialEq for CpuData {
    fn eq(&self, other: &Self) -> bool {
        self.planar() == other.planar()
    }
}

/// A CPU tensor reads like a [`crate::HostTensor`].
impl Tensor<CpuData> {
    /// The data.
    pub fn data(&self) -> &HostData {
        self.storage().data()
    }

    /// Zero-copy view of the elements as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.storage().as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// An account with room for `limit` bytes, counting what it holds.
    struct Counted {
        held: AtomicU64,
        limit: u64,
    }

    impl MemoryAccount for Counted {
        fn try_charge(&self, bytes: u64) -> bool {
            self.held
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |h| {
                    (h + bytes <= self.limit).then_some(h + bytes)
                })
                .is_ok()
        }

        fn release(&self, bytes: u64) {
            self.held.fetch_sub(bytes, Ordering::SeqCst);
        }
    }

    fn account(limit: u64) -> (Arc<Counted>, Arc<dyn MemoryAccount>) {
        let counted = Arc::new(Counted {
            held: AtomicU64::new(0),
            limit,
        });
        (counted.clone(), counted)
    }

    fn sum(d: &HostData) -> f32 {
        d.to_f32_vec().iter().sum()
    }

    #[test]
    fn built_on_the_second_read_then_reused_until_a_write() {
        let (held, acct) = account(u64::MAX);
        let mut t = CpuData::new(HostData::F32(vec![1.0, 2.0]));
        let key = Key::new("sum", &[]);
        let builds = std::cell::Cell::new(0);
        let get = |t: &CpuData| {
            t.derived(&key, 4, Some(&acct), |d| {
                builds.set(builds.get() + 1);
                sum(d)
            })
            .map(|v| *v)
        };
        assert_eq!(get(&t), None);
        assert_eq!(get(&t), Some(3.0));
        assert_eq!(get(&t), Some(3.0));
        assert_eq!(
            (t.derived_bytes(), held.held.load(Ordering::SeqCst)),
            (4, 4)
        );
        *t.data_mut() = HostData::F32(vec![5.0, 6.0]);
        assert_eq!(
            (t.derived_bytes(), held.held.load(Ordering::SeqCst)),
            (0, 0)
        );
        assert_eq!(get(&t), None);
        assert_eq!(get(&t), Some(11.0));
        assert_eq!(builds.get(), 2);
        drop(t);
        assert_eq!(held.held.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn uploaded_data_is_built_on_its_first_read_until_a_write() {
        let mut t = CpuData::uploaded(HostData::F32(vec![1.0, 2.0]));
        let key = Key::new("sum", &[]);
        let get = |t: &CpuData| t.derived(&key, 4, None, sum).map(|v| *v);
        assert_eq!(get(&t), Some(3.0));
        assert_eq!(t.derived_bytes(), 4);
        // Written, it is data like an op's output: built from its second read.
        *t.data_mut() = HostData::F32(vec![5.0, 6.0]);
        assert_eq!(get(&t), None);
        assert_eq!(get(&t), Some(11.0));
        // A clone is a copy of the data, not an upload.
        assert_eq!(get(&t.clone()), None);
    }

    #[test]
    fn keys_are_separate_and_a_refused_charge_computes_without_caching() {
        let (held, acct) = account(6);
        let t = CpuData::new(HostData::F32(vec![1.0]));
        let (a, b) = (Key::new("packed", &[4]), Key::new("packed", &[8]));
        assert!(t.derived(&a, 4, Some(&acct), |_| 1u8).is_none());
        assert_eq!(t.derived(&a, 4, Some(&acct), |_| 1u8).as_deref(), Some(&1));
        // 4 + 4 > 6: refused, nothing charged or cached, and asked again next time.
        assert!(t.derived(&b, 4, Some(&acct), |_| 2u8).is_none());
        assert_eq!(
            (t.derived_bytes(), held.held.load(Ordering::SeqCst)),
            (4, 4)
        );
        assert_eq!(t.derived(&a, 4, Some(&acct), |_| 9u8).as_deref(), Some(&1));
        // A clone is a copy of the data only.
        assert_eq!(t.clone().derived_bytes(), 0);
    }

    #[test]
    fn a_form_being_built_is_not_waited_for() {
        let t = CpuData::new(HostData::F32(vec![1.0]));
        let key = Key::new("slow", &[]);
        t.derived(&key, 0, None, |_| 0u8);
        let built = t.derived(&key, 0, None, |_| {
            // Another op wanting the same form meanwhile computes without it.
            assert!(t.derived(&key, 0, None, |_| 2u8).is_none());
            1u8
        });
        assert_eq!(built.as_deref(), Some(&1));
        assert_eq!(t.derived(&key, 0, None, |_| 3u8).as_deref(), Some(&1));
    }
}
