//! Hot memory for a program's intermediates. A model's arena gives every shape of intermediate
//! its own buffers, so on a network whose shapes change from layer to layer (MobileNetV2) most
//! outputs land in memory last touched a whole inference ago: out of every cache, each store
//! first fetches its line from DRAM. Where a backend can shorten a storage within its allocation
//! ([`Backend::set_len`]: the CPU backend, an accelerator on it), the storages of a whole
//! program's scratch entries (see [`Backend::run_program`]) are one pool instead: each step's
//! output takes the storage released last (what the step before just read, still in cache)
//! that is large enough and whose own entry does not need it back before the output is dead,
//! and after the program every storage goes back to its entry. The server does the same for a
//! remote program its client marks scratch (`rpc::server`). (Where a pool's threads run on
//! cores that share no cache, the writes pay for invalidating the other core's copies of what
//! it just read: on a Zen 4 VM whose two vCPUs sat on such cores, MobileNetV2 took 1.14× the
//! time lending on two threads, 0.97× on one; on cores sharing an L3, 0.94×.
//! `reports/2026-12-06-served-lending-zen4.md`.)
//!
//! [`placement`] decides, from the program alone, which storage each step writes;
//! [`Swaps`] moves the storages between table entries to match, and back, through a [`Lend`].

use crate::backend::{Backend, Step};
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::Tensor;

/// Most (steps × table entries) [`placement`] considers: 48 ms of it on one Zen 4 core where
/// every entry is a candidate (a chain of 2050 steps). A model's table is mostly weights,
/// never candidates; MobileNetV2's program is 55 steps.
pub(crate) const MAX_PLACEMENT_WORK: usize = 1 << 22;

/// For each step, the entry whose own storage its output is written into (storages are named
/// by the entry they belong to). `home` gives each table entry's dtype and length (`None` for
/// an empty entry); `reads` are read after the program and `inputs` written before it. Only
/// scratch entries (written by a step, neither read after nor written before) take another
/// entry's storage; theirs and the inputs' (after their last read) are lent.
pub(crate) fn placement(
    steps: &[Step],
    home: &[Option<(DType, usize)>],
    reads: &[usize],
    inputs: &[usize],
) -> Vec<usize> {
    const NEVER: usize = usize::MAX;
    let n = home.len();
    // Each step looks at every entry: past a bound (a client's program of a million ops over
    // thousands of tensors), nothing is lent rather than spend seconds placing it.
    if steps.len().saturating_mul(n) > MAX_PLACEMENT_WORK {
        return steps.iter().map(|s| s.output).collect();
    }
    let mut written = vec![false; n];
    for step in steps {
        written[step.output] = true;
    }
    let scratch: Vec<bool> = (0..n)
        .map(|e| written[e] && !reads.contains(&e) && !inputs.contains(&e))
        .collect();
    let lent: Vec<bool> = (0..n)
        .map(|e| home[e].is_some() && (scratch[e] || (inputs.contains(&e) && !written[e])))
        .collect();
    // The steps that write each entry, in order.
    let mut writes: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, step) in steps.iter().enumerate() {
        writes[step.output].push(i);
    }
    // The first step at or after `i` that writes `e`.
    let next_write = |e: usize, i: usize| {
        let w = &writes[e];
        w.get(w.partition_point(|&j| j < i))
            .copied()
            .unwrap_or(NEVER)
    };
    // One pass from the end: for each step, the last step that reads its output before its
    // entry is written again (the step itself if none does); left over, for each entry, the
    // last step that reads what it held before the program.
    let mut ends = vec![0; steps.len()];
    let mut last_reader: Vec<Option<usize>> = vec![None; n];
    for (i, step) in steps.iter().enumerate().rev() {
        ends[i] = last_reader[step.output].take().unwrap_or(i);
        for &e in &step.inputs {
            last_reader[e].get_or_insert(i);
        }
    }
    // Per storage: the last step that uses it (None: free since before the program, cold).
    let mut busy_until: Vec<Option<usize>> = vec![None; n];
    for &e in inputs.iter().filter(|&&e| lent[e]) {
        busy_until[e] = Some(last_reader[e].unwrap_or(0));
    }
    let mut choice = Vec::with_capacity(steps.len());
    for (i, step) in steps.iter().enumerate() {
        let o = step.output;
        if !scratch[o] || home[o].is_none() {
            choice.push(o);
            continue;
        }
        let end = ends[i];
        let (dtype, len) = home[o].expect("checked above");
        let free = |s: usize| busy_until[s].is_none_or(|u| u < i);
        let best = (0..n)
            .filter(|&s| lent[s] && free(s))
            .filter(|&s| home[s].is_some_and(|(d, l)| d == dtype && l >= len))
            // Back with its own entry before that entry is written again.
            .filter(|&s| s == o || next_write(s, i) > end)
            .max_by_key(|&s| {
                (
                    busy_until[s].map_or(0, |u| u + 1),
                    s == o,
                    std::cmp::Reverse(home[s].map_or(0, |(_, l)| l)),
                )
            })
            .unwrap_or(o);
        busy_until[best] = Some(end);
        choice.push(best);
    }
    choice
}

/// A table whose entries' storages [`Swaps`] moves.
pub(crate) trait Lend {
    /// Swaps the storages of entries `a` and `b` (distinct).
    fn swap(&mut self, a: usize, b: usize) -> Result<()>;
    /// The elements entry `e` holds by its descriptor (0 for an empty entry).
    fn want(&self, e: usize) -> usize;
    /// Sets the storage entry `e` now holds, allocated for `home` elements, to hold `len ≤ home`.
    fn set_len(&mut self, e: usize, len: usize, home: usize) -> Result<()>;
}

/// A backend's table of tensors as a [`Lend`]: storages moved by swapping, shortened by
/// [`Backend::set_len`].
pub(crate) struct Table<'a, B: Backend> {
    pub backend: &'a B,
    pub tensors: &'a mut [Option<Tensor<B::Storage>>],
}

impl<B: Backend> Lend for Table<'_, B> {
    fn swap(&mut self, a: usize, b: usize) -> Result<()> {
        let (lo, hi) = (a.min(b), a.max(b));
        let (left, right) = self.tensors.split_at_mut(hi);
        if let (Some(x), Some(y)) = (left[lo].as_mut(), right[0].as_mut()) {
            std::mem::swap(x.storage_mut(), y.storage_mut());
        }
        Ok(())
    }

    fn want(&self, e: usize) -> usize {
        self.tensors[e].as_ref().map_or(0, |t| t.desc().len())
    }

    fn set_len(&mut self, e: usize, len: usize, home: usize) -> Result<()> {
        match self.tensors[e].as_mut() {
            Some(t) => self.backend.set_len(t.storage_mut(), home, len),
            None => Ok(()),
        }
    }
}

/// Which storage each table entry holds while a program runs (see [`placement`]), and the
/// moves that put them there and back.
pub(crate) struct Swaps {
    /// The storage (named by its own entry) each entry holds.
    holds: Vec<usize>,
    /// The entry holding each storage.
    at: Vec<usize>,
    /// Each storage's own length.
    len: Vec<usize>,
}

impl Swaps {
    /// Every entry holding its own storage, of the length `home` gives it (as for
    /// [`placement`]; 0 for an empty entry).
    pub(crate) fn new(home: &[Option<(DType, usize)>]) -> Self {
        let n = home.len();
        Swaps {
            holds: (0..n).collect(),
            at: (0..n).collect(),
            len: home.iter().map(|h| h.map_or(0, |(_, len)| len)).collect(),
        }
    }

    /// Gives entry `e` storage `s` (the entry holding it gets `e`'s), at `e`'s length.
    pub(crate) fn give(&mut self, table: &mut impl Lend, e: usize, s: usize) -> Result<()> {
        if self.holds[e] == s {
            return Ok(());
        }
        let other = self.at[s];
        table.swap(e, other)?;
        let mine = self.holds[e];
        (self.holds[e], self.holds[other]) = (s, mine);
        (self.at[s], self.at[mine]) = (e, other);
        // The other entry is dead until it is written (it is given a storage then): its
        // storage keeps its own length.
        table.set_len(e, table.want(e), self.len[s])?;
        table.set_len(other, self.len[mine], self.len[mine])
    }

    /// Every storage back with its own entry, at its own length (all of them, whatever fails:
    /// the first error).
    pub(crate) fn restore(&mut self, table: &mut impl Lend) -> Result<()> {
        let mut first = Ok(());
        for e in 0..self.holds.len() {
            let done = self.give(table, e, e);
            if first.is_ok() {
                first = done;
            }
        }
        first
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::backend::cpu::{CpuBackend, CpuData};
    use crate::ops::Op;
    use crate::tensor::{HostData, TensorDesc};

    fn step(inputs: &[usize], output: usize) -> Step {
        Step {
            op: Op::Relu,
            inputs: inputs.to_vec(),
            output,
        }
    }

    /// Runs the program on value ids: every read must find the value last written to its
    /// entry, every storage written must be lent and fit, `reads` end in their own storage.
    fn check(
        steps: &[Step],
        home: &[Option<(DType, usize)>],
        reads: &[usize],
        inputs: &[usize],
        place: &[usize],
    ) -> std::result::Result<(), String> {
        let n = home.len();
        let written: Vec<usize> = steps.iter().map(|s| s.output).collect();
        let mut content: Vec<usize> = (0..n).collect();
        let mut value: Vec<usize> = (0..n).collect();
        let mut storage: Vec<usize> = (0..n).collect();
        for (i, (step, &s)) in steps.iter().zip(place).enumerate() {
            for &e in &step.inputs {
                if content[storage[e]] != value[e] {
                    return Err(format!("step {i} reads entry {e}: overwritten"));
                }
            }
            let lent = written.contains(&s) && !reads.contains(&s) && !inputs.contains(&s)
                || inputs.contains(&s) && !written.contains(&s);
            if s != step.output && !lent {
                return Err(format!("step {i} writes entry {s}'s storage, not lent"));
            }
            let (Some(want), Some(got)) = (home[step.output], home[s]) else {
                return Err(format!("step {i}: an empty entry"));
            };
            if want.0 != got.0 || want.1 > got.1 {
                return Err(format!("step {i}: {want:?} into a storage of {got:?}"));
            }
            let id = n + i;
            content[s] = id;
            value[step.output] = id;
            storage[step.output] = s;
        }
        for &e in reads {
            if storage[e] != e || content[e] != value[e] {
                return Err(format!("read {e} is not in its own storage"));
            }
        }
        Ok(())
    }

    #[test]
    fn each_output_takes_the_storage_released_last() {
        let f = Some((DType::F32, 100));
        // 0 (input) → 1 → 2 → 3 → 1 → 4 (read); entry 5 is a weight read by every step.
        let steps = [
            step(&[0, 5], 1),
            step(&[1, 5], 2),
            step(&[2, 5], 3),
            step(&[3, 5], 1),
            step(&[1, 5], 4),
        ];
        let home = [f, f, f, f, f, f];
        let place = placement(&steps, &home, &[4], &[0]);
        check(&steps, &home, &[4], &[0], &place).unwrap();
        // Step 1 writes where step 0 read the input, step 3 where step 2 read entry 2 (in
        // that storage); step 2 may not take entry 1's, which step 3 writes while entry 3 is
        // still read; the read output stays in its own storage.
        assert_eq!(place, [1, 0, 3, 0, 4]);
    }

    #[test]
    fn a_storage_is_lent_only_while_its_entry_is_dead() {
        let (small, big) = (Some((DType::F32, 10)), Some((DType::F32, 100)));
        // Entry 2 (big) is written at step 1 and again at step 3; entry 3 is written at
        // step 2 and read at step 4: it may not borrow 2's storage, which 2 needs at step 3.
        let steps = [
            step(&[0], 1),
            step(&[1], 2),
            step(&[2], 3),
            step(&[1], 2),
            step(&[2, 3], 4),
        ];
        let home = [small, big, big, big, small];
        let place = placement(&steps, &home, &[4], &[0]);
        check(&steps, &home, &[4], &[0], &place).unwrap();
        // Neither a smaller storage nor one of another dtype is taken.
        let home = [small, big, Some((DType::F16, 100)), big, small];
        let place = placement(&steps, &home, &[4], &[0]);
        check(&steps, &home, &[4], &[0], &place).unwrap();
        assert_eq!(place[2], 3, "entry 3 borrowed a storage that does not fit");
    }

    #[test]
    fn a_program_too_large_to_place_lends_nothing() {
        let f = Some((DType::F32, 10));
        // A chain whose steps could each take the storage the step before released.
        let chain = |n: usize| -> Vec<Step> { (1..n).map(|e| step(&[e - 1], e)).collect() };
        let small = chain(64);
        let home = vec![f; 64];
        let place = placement(&small, &home, &[63], &[0]);
        assert!(place.iter().zip(&small).any(|(&s, st)| s != st.output));
        // Steps × entries past the bound: every step in its own entry's storage.
        let n = (MAX_PLACEMENT_WORK as f64).sqrt() as usize + 2;
        let big = chain(n);
        let home = vec![f; n];
        let place = placement(&big, &home, &[n - 1], &[0]);
        assert!(place.iter().zip(&big).all(|(&s, st)| s == st.output));
    }

    #[test]
    fn the_check_catches_an_overwritten_value() {
        let f = Some((DType::F32, 10));
        let steps = [step(&[0], 1), step(&[1], 2), step(&[1, 2], 3)];
        let home = [f, f, f, f];
        // Step 1 writing entry 1's storage while step 2 still reads entry 1.
        assert!(check(&steps, &home, &[3], &[0], &[1, 1, 3]).is_err());
        // A weight's storage (entry 0 is no input here).
        assert!(check(&steps, &home, &[3], &[], &[1, 0, 3]).is_err());
        assert!(check(&steps, &home, &[3], &[0], &[1, 2, 3]).is_ok());
    }

    /// A table's entries (dtype and length), a program over it and the entries it reads.
    type Program = (Vec<Option<(DType, usize)>>, Vec<Step>, Vec<usize>);

    /// Random programs over a small table: entries 0 and 1 inputs, 2 a weight, the rest
    /// written by steps (some more than once, as a model's arena reuses them).
    fn programs() -> impl Strategy<Value = Program> {
        (4usize..10)
            .prop_flat_map(|n| {
                let home = prop::collection::vec((any::<bool>(), 1usize..6), n);
                let steps = prop::collection::vec((prop::collection::vec(0..n, 1..3), 3..n), 1..24);
                (home, steps, prop::collection::vec(3..n, 1..3))
            })
            .prop_map(|(home, steps, reads)| {
                let home = home
                    .into_iter()
                    .map(|(half, len)| Some((if half { DType::F16 } else { DType::F32 }, len)))
                    .collect();
                let steps = steps
                    .into_iter()
                    .map(|(mut inputs, output)| {
                        inputs.retain(|&i| i != output);
                        if inputs.is_empty() {
                            inputs.push(0);
                        }
                        step(&inputs, output)
                    })
                    .collect::<Vec<_>>();
                let written: Vec<usize> = steps.iter().map(|s| s.output).collect();
                let reads = reads.into_iter().filter(|r| written.contains(r)).collect();
                (home, steps, reads)
            })
    }

    proptest! {
        #[test]
        fn placements_never_lose_a_value((home, steps, reads) in programs()) {
            let inputs = [0, 1];
            let place = placement(&steps, &home, &reads, &inputs);
            prop_assert_eq!(place.len(), steps.len());
            if let Err(e) = check(&steps, &home, &reads, &inputs, &place) {
                return Err(TestCaseError::fail(format!("{e}: placement {place:?}")));
            }
        }
    }

    #[test]
    fn swaps_put_every_storage_back_at_its_length() {
        let lens = [40usize, 100, 100, 60, 100, 30];
        let mut tensors: Vec<Option<Tensor<CpuData>>> = lens
            .iter()
            .map(|&l| {
                let desc = TensorDesc::new(DType::F32, &[l]).unwrap();
                Some(Tensor::from_parts(
                    desc,
                    CpuData::new(HostData::filled(DType::F32, l, 0.0)),
                ))
            })
            .collect();
        let ptr = |t: &Option<Tensor<CpuData>>| match t.as_ref().unwrap().storage().data() {
            HostData::F32(v) => (v.as_ptr(), v.len()),
            HostData::F16(_) => unreachable!(),
        };
        let before: Vec<_> = tensors.iter().map(ptr).collect();
        let steps = [
            step(&[0], 1),
            step(&[1], 2),
            step(&[2], 3),
            step(&[3], 4),
            step(&[4], 5),
        ];
        let home: Vec<_> = lens.iter().map(|&l| Some((DType::F32, l))).collect();
        let place = placement(&steps, &home, &[5], &[0]);
        assert!(place.iter().zip(&steps).any(|(&s, st)| s != st.output));
        let cpu = CpuBackend::new();
        let mut swaps = Swaps::new(&home);
        for (i, (st, &s)) in steps.iter().zip(&place).enumerate() {
            let mut table = Table {
                backend: &cpu,
                tensors: &mut tensors,
            };
            swaps.give(&mut table, st.output, s).unwrap();
            let t = tensors[st.output].as_mut().unwrap();
            assert_eq!(t.storage().data().len(), t.desc().len(), "step {i}");
            match t.storage_mut().data_mut() {
                HostData::F32(v) => v.fill(i as f32),
                HostData::F16(_) => unreachable!(),
            }
            for &e in &st.inputs[..] {
                let t = tensors[e].as_ref().unwrap();
                assert_eq!(t.storage().data().len(), t.desc().len());
            }
        }
        let mut table = Table {
            backend: &cpu,
            tensors: &mut tensors,
        };
        swaps.restore(&mut table).unwrap();
        let after: Vec<_> = tensors.iter().map(ptr).collect();
        assert_eq!(before, after);
        assert_eq!(
            tensors[5].as_ref().unwrap().storage().data().to_f32_vec(),
            vec![4.0; 30]
        );
    }
}
