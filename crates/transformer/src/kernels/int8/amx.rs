//! The int8 kernel on Intel AMX tiles (`tdpbusd`: u8 × i8 products summed
//! into int32, like vpdpbusd, 16 × 16 outputs over 64 inputs at a time).
//!
//! The packed weights are already in the layout a `tdpbusd` B tile wants:
//! a panel's 64-byte line `g` holds, for column `l`, inputs `4g..4g+4` at
//! bytes `4l..4l+4`, so 16 consecutive lines are one B tile (64 inputs ×
//! 16 columns). An A tile is up to 16 rows of 64 activation codes, read
//! straight from the row-major codes. The sums are exact int32, so the
//! tiles equal the other paths' sums bit for bit; the caller dequantizes
//! them with the AVX-512 epilogue.
//!
//! Tile registers: `tmm0..tmm3` hold the sums of panels 0 to 3, `tmm4` the
//! rows' codes, `tmm5` and `tmm6` weights (alternating, so that a load
//! overlaps the product before it). Stable Rust has no AMX intrinsics, so
//! the instructions are inline assembly. Linux hands the tile registers to
//! a process only after it asks (`arch_prctl(ARCH_REQ_XCOMP_PERM)`):
//! [`super::super::missing_amx`] asks once, before this path can be chosen.

use std::arch::asm;
use std::cell::Cell;

use super::{Line, AMX_PANELS as PANELS, AMX_ROWS as ROWS, KG, NR};

/// Inputs per tile row: one 64-byte row of codes.
const TILE_K: usize = 64;
/// Packed lines per B tile.
pub(super) const GROUPS_PER_TILE: usize = TILE_K / KG;

/// The 64-byte operand of `ldtilecfg` (palette 1).
#[repr(C, align(64))]
struct Config {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// One tile instruction on the tile at `[base + stride · row]`.
macro_rules! tile_mem {
    ($op:literal, $base:expr, $stride:expr) => {
        asm!($op, in(reg) $base, in(reg) $stride, options(nostack, preserves_flags))
    };
}

/// One tile instruction on registers only.
macro_rules! tile_op {
    ($op:literal) => {
        asm!($op, options(nostack, nomem, preserves_flags))
    };
}

thread_local! {
    /// The row count of the tile configuration this thread loaded (0:
    /// none, or released). A task keeps its configuration from one call
    /// to the next (a block's last, shorter rows load another) and
    /// releases it when done ([`release`]).
    static LOADED_ROWS: Cell<u8> = const { Cell::new(0) };
}

/// Configure this thread's tiles for `rows` rows, unless they are.
///
/// # Safety
/// The CPU has AMX-TILE and the OS let this process use it; `1 <= rows <= 16`.
#[inline]
unsafe fn configure(rows: usize) {
    let rows = rows as u8;
    if LOADED_ROWS.with(Cell::get) == rows {
        return;
    }
    let mut c = Config {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        colsb: [0; 16],
        rows: [0; 16],
    };
    // Sums and codes: `rows` rows of 64 bytes; weights: 16 lines.
    for t in 0..5 {
        c.rows[t] = rows;
        c.colsb[t] = TILE_K as u16;
    }
    for t in 5..7 {
        c.rows[t] = GROUPS_PER_TILE as u8;
        c.colsb[t] = TILE_K as u16;
    }
    // SAFETY: the CPU has AMX-TILE with the OS's permission (caller); the
    // configuration is a valid palette-1 one (rows ≤ 16, 64 bytes a row).
    unsafe { asm!("ldtilecfg [{}]", in(reg) &c, options(nostack, readonly, preserves_flags)) };
    LOADED_ROWS.with(|l| l.set(rows));
}

/// Return this thread's tiles to their initial state (`tilerelease`), as
/// each product's task does when its tiles are done: no tile data then
/// outlives the task (a context switch need not save it), and the next
/// task configures the tiles afresh, so [`LOADED_ROWS`] cannot go stale
/// across code that runs between tasks. It costs nothing measurable
/// (benches/README.md, "AMX tiles for the int8 products").
///
/// # Safety
/// The CPU has AMX-TILE and the OS let this process use it.
pub(super) unsafe fn release() {
    // SAFETY: the CPU has AMX-TILE with the OS's permission (caller).
    unsafe { tile_op!("tilerelease") };
    LOADED_ROWS.with(|l| l.set(0));
}

/// `c[i][p·NR + l] = Σ_g Σ_t x[i][4g + t] · line(p, g)[4l + t]` for `rows`
/// rows and `np` panels, overwriting `c`: the contract of the other paths'
/// kernels.
///
/// # Safety
/// The CPU has AMX-TILE and AMX-INT8 with the OS's permission; `1 <= rows
/// <= 16`, `1 <= np <= 4`; `groups` is a positive multiple of
/// [`GROUPS_PER_TILE`]; `c` has `rows` rows of `np · NR` writable i32 at
/// stride `ldc`; `x` has `rows` rows of `4 · groups` bytes at stride `ldx`;
/// `w` has `np` panels of `groups` lines, one after the other.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn tiles(
    rows: usize,
    np: usize,
    c: *mut i32,
    ldc: usize,
    x: *const u8,
    ldx: usize,
    w: *const Line,
    groups: usize,
) {
    debug_assert!((1..=ROWS).contains(&rows) && (1..=PANELS).contains(&np));
    debug_assert!(groups > 0 && groups.is_multiple_of(GROUPS_PER_TILE));
    // SAFETY: for every instruction below: the CPU has AMX with permission, the
    // tiles are configured for `rows` rows; each load reads `rows` rows of
    // 64 bytes of `x` (within its rows' `4 · groups` bytes) or 16 lines of a
    // panel (within its `groups`); each store writes `rows` rows of 16 i32
    // of `c` (within `np · NR` columns) (caller).
    unsafe {
        configure(rows);
        tile_op!("tilezero tmm0");
        if np > 1 {
            tile_op!("tilezero tmm1");
        }
        if np > 2 {
            tile_op!("tilezero tmm2");
        }
        if np > 3 {
            tile_op!("tilezero tmm3");
        }
        // Panel p's 16 lines for the inputs s·64.. (a B tile, lines 64
        // bytes apart).
        let b = |p: usize, s: usize| w.add(p * groups + s * GROUPS_PER_TILE);
        for s in 0..groups / GROUPS_PER_TILE {
            tile_mem!("tileloadd tmm4, [{0} + {1}*1]", x.add(s * TILE_K), ldx);
            tile_mem!("tileloadd tmm5, [{0} + {1}*1]", b(0, s), TILE_K);
            tile_op!("tdpbusd tmm0, tmm4, tmm5");
            if np > 1 {
                tile_mem!("tileloadd tmm6, [{0} + {1}*1]", b(1, s), TILE_K);
                tile_op!("tdpbusd tmm1, tmm4, tmm6");
            }
            if np > 2 {
                tile_mem!("tileloadd tmm5, [{0} + {1}*1]", b(2, s), TILE_K);
                tile_op!("tdpbusd tmm2, tmm4, tmm5");
            }
            if np > 3 {
                tile_mem!("tileloadd tmm6, [{0} + {1}*1]", b(3, s), TILE_K);
                tile_op!("tdpbusd tmm3, tmm4, tmm6");
            }
        }
        let ldc_bytes = ldc * 4;
        tile_mem!("tilestored [{0} + {1}*1], tmm0", c, ldc_bytes);
        if np > 1 {
            tile_mem!("tilestored [{0} + {1}*1], tmm1", c.add(NR), ldc_bytes);
        }
        if np > 2 {
            tile_mem!("tilestored [{0} + {1}*1], tmm2", c.add(2 * NR), ldc_bytes);
        }
        if np > 3 {
            tile_mem!("tilestored [{0} + {1}*1], tmm3", c.add(3 * NR), ldc_bytes);
        }
    }
}
