//! A set of page indexes kept as a sparse bitmap: one bit per page, in blocks of `BLOCK_PAGES`
//! pages, each block allocated when the first page in it is added.
//!
//! A span records here which pages already have their span-start image in the journal. A span
//! over a huge transaction on an existing backup (a `VACUUM`, an `UPDATE` of every row) journals
//! every page; a `HashSet<u64>` held ~18 bytes per page for that, and twice as much while its table
//! grew (~7 MB at the peak for a 1 GB backup). The bitmap holds 1 bit per page of the blocks
//! touched: 32 KiB for a 1 GB backup, however many of its pages are in the set.
//!
//! Invariants: `len` is the number of bits set; a block exists once one of its pages was added and
//! is never freed (the set only grows, and is dropped with its span).

/// Pages per block: 4 KiB of bits.
const BLOCK_PAGES: u64 = 1 << 15;
const WORDS_PER_BLOCK: usize = (BLOCK_PAGES / 64) as usize;

type Block = Box<[u64; WORDS_PER_BLOCK]>;

#[derive(Debug, Default)]
pub struct PageBits {
    /// Block `i` covers pages `i * BLOCK_PAGES ..`; `None` until one of them is added.
    blocks: Vec<Option<Block>>,
    len: u64,
}

/// Where page `idx`'s bit lives: block, word in the block, bit in the word.
fn locate(idx: u64) -> (usize, usize, u64) {
    let block = (idx / BLOCK_PAGES) as usize;
    let in_block = idx % BLOCK_PAGES;
    (block, (in_block / 64) as usize, 1u64 << (in_block % 64))
}

impl PageBits {
    pub fn new() -> Self {
        PageBits::default()
    }

    pub fn contains(&self, idx: u64) -> bool {
        let (block, word, bit) = locate(idx);
        self.blocks
            .get(block)
            .and_then(|b| b.as_ref())
            .is_some_and(|b| b[word] & bit != 0)
    }

    /// Adds page `idx`; true if it was not in the set yet.
    pub fn insert(&mut self, idx: u64) -> bool {
        let (block, word, bit) = locate(idx);
        if self.blocks.len() <= block {
            self.blocks.resize_with(block + 1, || None);
        }
        let b = self.blocks[block].get_or_insert_with(|| Box::new([0; WORDS_PER_BLOCK]));
        let added = b[word] & bit == 0;
        b[word] |= bit;
        self.len += u64::from(added);
        added
    }

    /// Number of pages in the set.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Blocks allocated so far (for tests of the memory bound).
    #[cfg(test)]
    fn blocks_allocated(&self) -> usize {
        self.blocks.iter().filter(|b| b.is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn agrees_with_a_hash_set() {
        let mut bits = PageBits::new();
        let mut model = HashSet::new();
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Dense near 0 and around block edges, sparse far out.
            let idx = match x % 4 {
                0 => x % 100,
                1 => BLOCK_PAGES - 2 + (x >> 8) % 4,
                2 => (x >> 4) % (5 * BLOCK_PAGES),
                _ => (x >> 4) % u64::from(u32::MAX),
            };
            if x & 1 == 0 {
                assert_eq!(bits.insert(idx), model.insert(idx), "insert {idx}");
            }
            let probe = (x >> 3) % (6 * BLOCK_PAGES);
            assert_eq!(
                bits.contains(probe),
                model.contains(&probe),
                "probe {probe}"
            );
            assert_eq!(bits.contains(idx), model.contains(&idx), "idx {idx}");
        }
        assert_eq!(bits.len(), model.len() as u64);
        for &idx in &model {
            assert!(bits.contains(idx));
        }
    }

    #[test]
    fn memory_follows_the_blocks_touched() {
        let mut bits = PageBits::new();
        assert!(bits.is_empty() && !bits.contains(0));
        // Every page of a 1 GB database (4 KiB pages): 8 blocks of 4 KiB.
        for idx in 0..262_144 {
            assert!(bits.insert(idx));
        }
        assert!(!bits.insert(7));
        assert_eq!(bits.len(), 262_144);
        assert_eq!(bits.blocks_allocated(), 8);
        // One page far out adds one block, not the blocks between.
        bits.insert(u64::from(u32::MAX) - 1);
        assert_eq!(bits.blocks_allocated(), 9);
        assert!(!bits.contains(262_144));
    }
}
