/* The perceptual hashes' small grayscale images, in one pass over a decoded image
 * (neuroprint.kernels.gray_lanczos).
 *
 * gray_lanczos(img, outs, order_rule) -> None
 *
 *   img   uint8 [H, W, 3] (RGB) or [H, W] (gray), C-contiguous
 *   outs  a tuple of writable uint8 [h, w] arrays, C-contiguous: each is filled with
 *         img.convert("L").resize((w, h), Image.LANCZOS), bit for bit what Pillow gives
 *   order_rule  true: Pillow 13's order of the passes (the vertical one first when the height is cut by
 *         more than twice what the width is); false: the horizontal pass first always (earlier Pillow).
 *         The wrapper finds which one the installed Pillow follows.
 *
 * Pillow's recipe, step by step (Pillow's src/libImaging/Convert.c and Resample.c):
 *   - L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16;
 *   - per axis, the LANCZOS (a = 3) weights of each output pixel computed in double as Pillow does, then
 *     normalised to their sum and rounded to 22-bit fixed point ((int)(w * 2^22 +- 0.5));
 *   - a horizontal pass over the rows the vertical pass reads, each output value an int32 sum started at
 *     2^21 and clipped to [0, 255] after >> 22; then the vertical pass the same way on that uint8 image
 *     (or the vertical pass first, see order_rule); an axis whose size does not change is not resampled.
 * The RGB image is read once for every output: each row becomes its L row, and every horizontal-first
 * output's horizontal pass reads that row while it is in the cache (a vertical-first output reads the
 * whole L image, kept for it). Pillow makes one pass for the conversion and one per resize. The int32 sums cannot overflow: the normalised LANCZOS weights' positive part is well
 * under 2, so a sum stays under 255 * 2 * 2^22 + 2^21 < 2^31.
 *
 * The floating-point steps must round as Pillow's do: no contraction into fused multiply-adds
 * (-ffp-contract=off in pyproject.toml), sin() from the same libm. The reference is Pillow itself
 * (kernels/gray_lanczos.py:reference_gray_lanczos); the tests compare every output bit for bit.
 * The GIL is released for the whole pass.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

#define PRECISION_BITS (32 - 8 - 2)

/* The integer loops below are built twice on x86-64 (AVX2 and the baseline), the loader picks one per CPU:
 * the baseline has no 32-bit vector multiply. Integer sums: the same bits either way. */
#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif
#define MAX_OUTS 8

static inline double sinc_filter(double x) {
    if (x == 0.0) return 1.0;
    x = x * M_PI;
    return sin(x) / x;
}

static inline double lanczos_filter(double x) {
    if (-3.0 <= x && x < 3.0) return sinc_filter(x) * sinc_filter(x / 3);
    return 0.0;
}

static inline uint8_t clip8(int in) {
    const int v = in >> PRECISION_BITS;
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

typedef struct {
    int ksize;
    int *bounds;  /* [out * 2]: first input index, number of weights */
    int32_t *kk;  /* [out * ksize] */
} Coeffs;

/* Pillow's precompute_coeffs for the box [0, in_size] and LANCZOS, then normalize_coeffs_8bpc. */
static int precompute(int in_size, int out_size, Coeffs *c) {
    const float in0 = 0.0f, in1 = (float)in_size;
    double support, scale, filterscale;
    filterscale = scale = (double)(in1 - in0) / out_size;
    if (filterscale < 1.0) filterscale = 1.0;
    support = 3.0 * filterscale;
    const int ksize = (int)ceil(support) * 2 + 1;
    double *pre = (double *)malloc((size_t)out_size * (size_t)ksize * sizeof(double));
    c->bounds = (int *)malloc((size_t)out_size * 2 * sizeof(int));
    c->kk = (int32_t *)malloc((size_t)out_size * (size_t)ksize * sizeof(int32_t));
    if (!pre || !c->bounds || !c->kk) {
        free(pre);
        free(c->bounds);
        free(c->kk);
        c->bounds = NULL;
        c->kk = NULL;
        return -1;
    }
    for (int xx = 0; xx < out_size; xx++) {
        const double center = in0 + (xx + 0.5) * scale;
        double ww = 0.0;
        const double ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double *k = &pre[(size_t)xx * ksize];
        int x;
        for (x = 0; x < xmax; x++) {
            const double w = lanczos_filter((x + xmin - center + 0.5) * ss);
            k[x] = w;
            ww += w;
        }
        for (x = 0; x < xmax; x++) {
            if (ww != 0.0) k[x] /= ww;
        }
        for (; x < ksize; x++) k[x] = 0;
        c->bounds[xx * 2 + 0] = xmin;
        c->bounds[xx * 2 + 1] = xmax;
    }
    for (size_t i = 0; i < (size_t)out_size * (size_t)ksize; i++) {
        c->kk[i] = pre[i] < 0 ? (int32_t)(-0.5 + pre[i] * (1 << PRECISION_BITS))
                              : (int32_t)(0.5 + pre[i] * (1 << PRECISION_BITS));
    }
    free(pre);
    c->ksize = ksize;
    return 0;
}

typedef struct {
    int w, h;             /* output size */
    int need_h, need_v;   /* whether each axis is resampled */
    int vfirst;           /* the vertical pass first (Pillow >= 13, for heights cut much more than widths) */
    Coeffs ch, cv;        /* horizontal, vertical weights */
    int yfirst, ylast;    /* the input rows the vertical pass reads: [yfirst, ylast) */
    uint8_t *tmp;         /* [ylast - yfirst, w or W]: the rows after the horizontal pass */
    uint8_t *out;
} Plan;

static void free_plan(Plan *p) {
    free(p->ch.bounds);
    free(p->ch.kk);
    free(p->cv.bounds);
    free(p->cv.kk);
    free(p->tmp);
}

/* Pillow's rgb2l: L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16. */
CLONES
static void rgb_to_l(const uint8_t *p3, uint8_t *l, Py_ssize_t n) {
    for (Py_ssize_t x = 0; x < n; x++)
        l[x] = (uint8_t)((p3[3 * x] * 19595u + p3[3 * x + 1] * 38470u + p3[3 * x + 2] * 7471u + 0x8000u) >> 16);
}

/* One row's horizontal pass: out[xx] = clip8(2^21 + sum_x row[xmin + x] * k[x]). */
CLONES
static void hpass_row(const uint8_t *row, uint8_t *out, int w, const Coeffs *c) {
    const int ks = c->ksize;
    for (int xx = 0; xx < w; xx++) {
        const int xmin = c->bounds[xx * 2], xmax = c->bounds[xx * 2 + 1];
        const int32_t *k = &c->kk[(size_t)xx * ks];
        const uint8_t *r = row + xmin;
        int32_t ss = 1 << (PRECISION_BITS - 1);
        for (int x = 0; x < xmax; x++) ss += (int32_t)r[x] * k[x];
        out[xx] = clip8(ss);
    }
}

/* The vertical pass over rows [first, ...) of img (width tw, row y of the image at img + (y - first) * tw)
 * into out [h, tw]. Each output row is summed row by row of the input into acc [tw] (int32 sums: the same
 * as Pillow's pixel-by-pixel order, contiguous and vectorised). */
CLONES
static void vpass(const uint8_t *img, int first, int tw, uint8_t *out, int h, const Coeffs *c, int32_t *acc) {
    const int ks = c->ksize;
    for (int yy = 0; yy < h; yy++) {
        const int ymin = c->bounds[yy * 2] - first, ymax = c->bounds[yy * 2 + 1];
        const int32_t *k = &c->kk[(size_t)yy * ks];
        for (int xx = 0; xx < tw; xx++) acc[xx] = 1 << (PRECISION_BITS - 1);
        for (int y = 0; y < ymax; y++) {
            const uint8_t *r = img + (size_t)(y + ymin) * tw;
            const int32_t ky = k[y];
            for (int xx = 0; xx < tw; xx++) acc[xx] += (int32_t)r[xx] * ky;
        }
        uint8_t *o = out + (size_t)yy * tw;
        for (int xx = 0; xx < tw; xx++) o[xx] = clip8(acc[xx]);
    }
}

static PyObject *gray_lanczos(PyObject *self, PyObject *args) {
    PyObject *img_obj, *outs_obj;
    int order_rule;
    if (!PyArg_ParseTuple(args, "OO!p", &img_obj, &PyTuple_Type, &outs_obj, &order_rule)) return NULL;
    const Py_ssize_t nouts = PyTuple_GET_SIZE(outs_obj);
    if (nouts < 1 || nouts > MAX_OUTS) {
        PyErr_Format(PyExc_ValueError, "outs must hold 1 to %d arrays, got %zd", MAX_OUTS, nouts);
        return NULL;
    }
    Py_buffer vin, vout[MAX_OUTS];
    Plan plans[MAX_OUTS];
    memset(plans, 0, sizeof(plans));
    int got = 0, ok = 0, any_vfirst = 0;
    if (PyObject_GetBuffer(img_obj, &vin, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return NULL;
    const char *f = vin.format ? vin.format : "B";
    if (vin.itemsize != 1 || (f[0] != 'B' && f[0] != 'c') || !(vin.ndim == 2 || (vin.ndim == 3 && vin.shape[2] == 3))) {
        PyErr_SetString(PyExc_ValueError, "img must be a C-contiguous uint8 [H, W, 3] or [H, W] array");
        PyBuffer_Release(&vin);
        return NULL;
    }
    const Py_ssize_t H = vin.shape[0], W = vin.shape[1];
    const int rgb = vin.ndim == 3;
    if (H < 1 || W < 1 || H > INT32_MAX / 4 || W > INT32_MAX / 4) {
        PyErr_SetString(PyExc_ValueError, "img must have 1 to 2^29 rows and columns");
        PyBuffer_Release(&vin);
        return NULL;
    }
    for (; got < nouts; got++) {
        Py_buffer *v = &vout[got];
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(outs_obj, got), v, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0)
            goto done;
        const char *g = v->format ? v->format : "B";
        if (v->itemsize != 1 || (g[0] != 'B' && g[0] != 'c') || v->ndim != 2 || v->shape[0] < 1 || v->shape[1] < 1 ||
            v->shape[0] > 4096 || v->shape[1] > 4096) {
            PyErr_SetString(PyExc_ValueError, "each output must be a writable C-contiguous uint8 [h, w] array, 1 <= h, w <= 4096");
            got++;
            goto done;
        }
        Plan *p = &plans[got];
        p->h = (int)v->shape[0];
        p->w = (int)v->shape[1];
        p->out = (uint8_t *)v->buf;
        p->need_h = p->w != W;
        p->need_v = p->h != H;
        /* Pillow 13's ImagingResampleInner: "if height is being scaled down more than twice the amount the
         * width is, run the vertical pass first" (need_v is then true) */
        p->vfirst = order_rule && (H - p->h) > 0 && (H - p->h) > (W - p->w) * 2;
        any_vfirst |= p->vfirst;
        if (precompute((int)H, p->h, &p->cv) < 0 || (p->need_h && precompute((int)W, p->w, &p->ch) < 0)) {
            PyErr_NoMemory();
            got++;
            goto done;
        }
        /* horizontal first: the rows the vertical pass reads, [yfirst, ylast), after the horizontal pass;
         * vertical first: the h rows of width W after the vertical pass */
        p->yfirst = p->vfirst ? 0 : p->cv.bounds[0];
        p->ylast = p->vfirst ? p->h : p->cv.bounds[p->h * 2 - 2] + p->cv.bounds[p->h * 2 - 1];
        const size_t tw = p->need_h && !p->vfirst ? (size_t)p->w : (size_t)W;
        p->tmp = (uint8_t *)malloc((size_t)(p->ylast - p->yfirst) * tw + 1);
        if (!p->tmp) {
            PyErr_NoMemory();
            got++;
            goto done;
        }
    }
    {
        /* the L image: one row at a time, or whole when an output runs its vertical pass first */
        uint8_t *lbuf = rgb ? (uint8_t *)malloc(any_vfirst ? (size_t)H * (size_t)W : (size_t)W) : NULL;
        size_t widest = (size_t)W;  /* a vertical pass runs on rows of W or of an output's w */
        for (int i = 0; i < nouts; i++)
            if ((size_t)plans[i].w > widest) widest = (size_t)plans[i].w;
        int32_t *acc = (int32_t *)malloc(widest * sizeof(int32_t));  /* a vertical pass's row sums */
        if ((rgb && !lbuf) || !acc) {
            free(lbuf);
            free(acc);
            PyErr_NoMemory();
            goto done;
        }
        const uint8_t *px = (const uint8_t *)vin.buf;
        Py_BEGIN_ALLOW_THREADS
        int ystart = (int)H, ystop = 0;
        for (int i = 0; i < nouts; i++) {
            const int a = plans[i].vfirst ? 0 : plans[i].yfirst, b = plans[i].vfirst ? (int)H : plans[i].ylast;
            if (a < ystart) ystart = a;
            if (b > ystop) ystop = b;
        }
        for (int y = ystart; y < ystop; y++) {
            const uint8_t *row;
            if (rgb) {
                const uint8_t *p3 = px + (size_t)y * (size_t)W * 3;
                uint8_t *l = lbuf + (any_vfirst ? (size_t)y * (size_t)W : 0);
                rgb_to_l(p3, l, W);
                row = l;
            } else {
                row = px + (size_t)y * (size_t)W;
            }
            for (int i = 0; i < nouts; i++) {
                Plan *p = &plans[i];
                if (p->vfirst || y < p->yfirst || y >= p->ylast) continue;
                if (!p->need_h) {
                    memcpy(p->tmp + (size_t)(y - p->yfirst) * (size_t)W, row, (size_t)W);
                    continue;
                }
                hpass_row(row, p->tmp + (size_t)(y - p->yfirst) * (size_t)p->w, p->w, &p->ch);
            }
        }
        const uint8_t *limg = rgb ? lbuf : px;  /* the whole L image when any_vfirst */
        for (int i = 0; i < nouts; i++) {
            Plan *p = &plans[i];
            if (p->vfirst) {  /* vertical pass over the L image into tmp [h, W], then the horizontal one */
                vpass(limg, 0, (int)W, p->tmp, p->h, &p->cv, acc);
                if (!p->need_h) {
                    memcpy(p->out, p->tmp, (size_t)p->h * (size_t)W);
                } else {
                    for (int yy = 0; yy < p->h; yy++)
                        hpass_row(p->tmp + (size_t)yy * (size_t)W, p->out + (size_t)yy * (size_t)p->w, p->w, &p->ch);
                }
                continue;
            }
            const int tw = p->need_h ? p->w : (int)W;  /* == p->w when no horizontal pass: W == w */
            if (!p->need_v) {  /* every row was read: tmp is the output */
                memcpy(p->out, p->tmp, (size_t)p->h * (size_t)tw);
                continue;
            }
            vpass(p->tmp, p->yfirst, tw, p->out, p->h, &p->cv, acc);
        }
        Py_END_ALLOW_THREADS
        free(lbuf);
        free(acc);
        ok = 1;
    }
done:
    for (int i = 0; i < got; i++) {  /* the outputs whose buffers were taken */
        free_plan(&plans[i]);
        PyBuffer_Release(&vout[i]);
    }
    PyBuffer_Release(&vin);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"gray_lanczos", gray_lanczos, METH_VARARGS,
     "The grayscale LANCZOS thumbnails of one image, as Pillow makes them: see kernels/_gray_lanczos.c."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_gray_lanczos", NULL, -1, methods};

PyMODINIT_FUNC PyInit__gray_lanczos(void) { return PyModule_Create(&module); }
