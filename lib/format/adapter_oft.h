/* adapter_oft.h - what PEFT's OFT adapter tensors mean (peft/tuners/oft/
 * layer.py, PEFT 0.21), for the model that trains them (lib/model) and the
 * merge that folds them in (lib/export).
 *
 * A module with `in` inputs has r blocks of size b (r * b = in); its
 * oft_R.weight is [r, b(b-1)/2], each row the upper triangle (row-major,
 * torch.triu_indices(b, b, 1)) of a skew-symmetric Q = U - U^T, and the
 * block rotation is the Cayley-Neumann series PEFT uses by default:
 *
 *   R = I + 2Q + 2Q^2 + ... + 2Q^(K-1) + Q^K    (num_cayley_neumann_terms)
 *
 * (as _cayley_batch adds the terms: 5 terms give I + 2Q + 2Q^2 + 2Q^3 +
 * Q^4).  The forward pass rotates the module's input block by block,
 * x_rot[.., i*b + c] = sum_k x[.., i*b + k] R_i[k][c], and the base layer
 * runs on x_rot; merged, W becomes W . blockdiag(R)^T.
 */
#ifndef FT_ADAPTER_OFT_H
#define FT_ADAPTER_OFT_H

/* The block count and size PEFT picks for `in` inputs from the config's
 * r and oft_block_size (exactly one of them non-zero), adjusting a size
 * that does not divide `in` as OFTLayer.adjust_oft_parameters does.
 * -1 when both or neither are given. */
int ft_oft_dims(int in, int cfg_r, int cfg_block, int *r, int *b);
/* The Cayley-Neumann coefficients c[0..K] of R = sum c_k Q^k; returns K. */
int ft_oft_coefs(int terms, double c[65]);
/* R [r, b, b] from w [r, b(b-1)/2]. */
void ft_oft_rotation(const float *w, int r, int b, int terms, float *R);
/* dw [r, b(b-1)/2] += dL/dw from dR [r, b, b] = dL/dR. */
void ft_oft_rotation_backward(const float *w, int r, int b, int terms, const float *dR, float *dw);
/* W [out, in] <- W . blockdiag(R)^T, R [in / b, b, b] (PEFT's merge). */
void ft_oft_merge(float *W, int out, int in, int b, const float *R);

#endif
