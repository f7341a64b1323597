//! BLAKE3-256 as in the specification's reference implementation: portable,
//! one compression at a time, with the chaining-value stack for the tree.

const OUT_LEN: usize = 32;
const BLOCK_LEN: usize = 64;
const CHUNK_LEN: usize = 1024;
const CHUNK_START: u32 = 1 << 0;
const CHUNK_END: u32 = 1 << 1;
const PARENT: u32 = 1 << 2;
const ROOT: u32 = 1 << 3;
const IV: [u32; 8] = [
    0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19,
];
const MSG_PERMUTATION: [usize; 16] = [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8];

#[allow(clippy::too_many_arguments)]
fn g(s: &mut [u32; 16], a: usize, b: usize, c: usize, d: usize, mx: u32, my: u32) {
    s[a] = s[a].wrapping_add(s[b]).wrapping_add(mx);
    s[d] = (s[d] ^ s[a]).rotate_right(16);
    s[c] = s[c].wrapping_add(s[d]);
    s[b] = (s[b] ^ s[c]).rotate_right(12);
    s[a] = s[a].wrapping_add(s[b]).wrapping_add(my);
    s[d] = (s[d] ^ s[a]).rotate_right(8);
    s[c] = s[c].wrapping_add(s[d]);
    s[b] = (s[b] ^ s[c]).rotate_right(7);
}

fn round(s: &mut [u32; 16], m: &[u32; 16]) {
    g(s, 0, 4, 8, 12, m[0], m[1]);
    g(s, 1, 5, 9, 13, m[2], m[3]);
    g(s, 2, 6, 10, 14, m[4], m[5]);
    g(s, 3, 7, 11, 15, m[6], m[7]);
    g(s, 0, 5, 10, 15, m[8], m[9]);
    g(s, 1, 6, 11, 12, m[10], m[11]);
    g(s, 2, 7, 8, 13, m[12], m[13]);
    g(s, 3, 4, 9, 14, m[14], m[15]);
}

fn compress(cv: &[u32; 8], block: &[u32; 16], counter: u64, block_len: u32, flags: u32) -> [u32; 16] {
    let mut s = [
        cv[0], cv[1], cv[2], cv[3], cv[4], cv[5], cv[6], cv[7],
        IV[0], IV[1], IV[2], IV[3], counter as u32, (counter >> 32) as u32, block_len, flags,
    ];
    let mut m = *block;
    for r in 0..7 {
        round(&mut s, &m);
        if r < 6 {
            let mut p = [0u32; 16];
            for i in 0..16 {
                p[i] = m[MSG_PERMUTATION[i]];
            }
            m = p;
        }
    }
    for i in 0..8 {
        s[i] ^= s[i + 8];
        s[i + 8] ^= cv[i];
    }
    s
}

fn words(block: &[u8]) -> [u32; 16] {
    let mut padded = [0u8; BLOCK_LEN];
    padded[..block.len()].copy_from_slice(block);
    let mut w = [0u32; 16];
    for i in 0..16 {
        w[i] = u32::from_le_bytes(padded[i * 4..i * 4 + 4].try_into().unwrap());
    }
    w
}

fn first8(x: [u32; 16]) -> [u32; 8] {
    x[..8].try_into().unwrap()
}

struct Output {
    cv: [u32; 8],
    block: [u32; 16],
    counter: u64,
    block_len: u32,
    flags: u32,
}

impl Output {
    fn chaining_value(&self) -> [u32; 8] {
        first8(compress(&self.cv, &self.block, self.counter, self.block_len, self.flags))
    }
    fn root_bytes(&self) -> [u8; OUT_LEN] {
        let w = compress(&self.cv, &self.block, 0, self.block_len, self.flags | ROOT);
        let mut out = [0u8; OUT_LEN];
        for i in 0..8 {
            out[i * 4..i * 4 + 4].copy_from_slice(&w[i].to_le_bytes());
        }
        out
    }
}

/// Output of one 1 KiB chunk; `data` is at most CHUNK_LEN bytes.
fn chunk_output(data: &[u8], counter: u64) -> Output {
    let mut cv = IV;
    let blocks: Vec<&[u8]> = if data.is_empty() { vec![&[][..]] } else { data.chunks(BLOCK_LEN).collect() };
    let last = blocks.len() - 1;
    for (i, b) in blocks[..last].iter().enumerate() {
        let start = if i == 0 { CHUNK_START } else { 0 };
        cv = first8(compress(&cv, &words(b), counter, BLOCK_LEN as u32, start));
    }
    let start = if last == 0 { CHUNK_START } else { 0 };
    Output { cv, block: words(blocks[last]), counter, block_len: blocks[last].len() as u32, flags: start | CHUNK_END }
}

fn parent_output(left: [u32; 8], right: [u32; 8]) -> Output {
    let mut block = [0u32; 16];
    block[..8].copy_from_slice(&left);
    block[8..].copy_from_slice(&right);
    Output { cv: IV, block, counter: 0, block_len: BLOCK_LEN as u32, flags: PARENT }
}

/// BLAKE3-256 of `data`.
pub fn blake3(data: &[u8]) -> [u8; OUT_LEN] {
    let chunks: Vec<&[u8]> = if data.is_empty() { vec![&[][..]] } else { data.chunks(CHUNK_LEN).collect() };
    let mut stack: Vec<[u32; 8]> = Vec::new();
    let last = chunks.len() - 1;
    for (i, c) in chunks[..last].iter().enumerate() {
        // Merge completed subtrees: one merge per trailing zero bit of the count.
        let mut cv = chunk_output(c, i as u64).chaining_value();
        let mut total = i as u64 + 1;
        while total & 1 == 0 {
            cv = parent_output(stack.pop().unwrap(), cv).chaining_value();
            total >>= 1;
        }
        stack.push(cv);
    }
    let mut out = chunk_output(chunks[last], last as u64);
    while let Some(left) = stack.pop() {
        out = parent_output(left, out.chaining_value());
    }
    out.root_bytes()
}
