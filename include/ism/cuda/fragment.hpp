#pragma once
// Where each lane's data sits in the kernel's mma.m16n8k16 fragments, as plain
// functions of the lane (ISM_HOST_DEVICE, no CUDA needed): the kernel takes its
// ldmatrix row addresses and its score/output coordinates from here, and
// tests/cuda_host emulates ldmatrix and mma on the host to check that these
// compose into Q K^T and P V.
//
// ldmatrix.x4 loads four 8x8 b16 matrices; lane L supplies the address of row
// L % 8 of matrix L / 8, and receives, for matrix i in register i, the pair
// (row L/4, columns 2(L%4), 2(L%4)+1), or with .trans the pair (rows 2(L%4),
// 2(L%4)+1, column L/4).
#include "ism/core/config.hpp"

namespace ism::cuda::frag {

// A operand, 16x16 from a row-major [m][k] tile (Q): matrices (rows 0-7,
// k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15) are
// registers a0..a3. Row and column, relative to the tile, of lane's address.
ISM_HOST_DEVICE int a_row(int lane) { return lane & 15; }
ISM_HOST_DEVICE int a_col(int lane) { return (lane >> 4) * 8; }

// B operands of two neighbouring n8 tiles from an [n][k] tile (K: keys x
// dims, B = K^T), no transpose: registers {b0, b1} of tile 0 then of tile 1.
ISM_HOST_DEVICE int bt_row(int lane) { return (lane & 7) + ((lane >> 4) << 3); }
ISM_HOST_DEVICE int bt_col(int lane) { return ((lane >> 3) & 1) * 8; }

// B operands of two neighbouring n8 tiles from a [k][n] tile (V: keys x
// dims), ldmatrix .trans: registers {b0, b1} of tile 0 then of tile 1.
ISM_HOST_DEVICE int b_row(int lane) { return lane & 15; }
ISM_HOST_DEVICE int b_col(int lane) { return (lane >> 4) * 8; }

// Accumulator element e (0..3) of a lane in a 16x8 C tile: rows g and g+8
// (g = lane / 4), columns 2(lane % 4) and +1.
ISM_HOST_DEVICE int c_row(int lane, int e) { return (lane >> 2) + 8 * (e >> 1); }
ISM_HOST_DEVICE int c_col(int lane, int e) { return 2 * (lane & 3) + (e & 1); }

}  // namespace ism::cuda::frag
