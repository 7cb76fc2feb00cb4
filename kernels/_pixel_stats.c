/* One pass over a uint8 RGB image for the check's quality statistics (neuroprint.kernels.pixel_stats).
 *
 * pixel_stats(img, sq_rg, sq_b, sat, luma_hist, rg_hist, yb_hist, lap_hist) -> (bright_sum, sat_sum, spread_sum)
 *
 *   img       uint8 [H, W, 3], C-contiguous
 *   sq_rg     float32 [65536]  0.241 R^2 + 0.691 G^2, indexed R * 256 + G
 *   sq_b      float32 [256]    0.068 B^2
 *   sat       float32 [65536]  (max - min) / max, indexed max * 256 + min
 *   luma_hist int64 [256]      counts of the luma (77 R + 150 G + 29 B + 128) >> 8       (added to)
 *   rg_hist   int64 [511]      counts of R - G + 255                                      (added to)
 *   yb_hist   int64 [1021]     counts of R + G - 2 B + 510                                (added to)
 *   lap_hist  int64 [2041]     counts of the 4-neighbour Laplacian of the luma + 1020, over the
 *                              interior pixels (none when H < 3 or W < 3)               (added to)
 *   bright_sum  sum over pixels of sqrt(sq_rg[R, G] + sq_b[B]) (each term a float32, summed in double)
 *   sat_sum     sum over pixels of sat[max, min] (float32 terms, summed in double)
 *   spread_sum  sum over pixels of max - min (exact)
 *
 * The plain numpy reference is kernels/pixel_stats.py:reference_pixel_stats; every integer output is
 * exactly equal to it, the two float sums to double precision (the order of the sum differs). The GIL is
 * released for the whole pass, so decode threads run it side by side.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static int get_buffer(PyObject *obj, Py_buffer *view, const char *name, const char *fmt, Py_ssize_t itemsize,
                      Py_ssize_t count, int writable) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) {
        PyErr_Format(PyExc_TypeError, "%s must be a C-contiguous%s buffer", name, writable ? " writable" : "");
        return -1;
    }
    const char *f = view->format ? view->format : "B";
    if (f[0] == '<' || f[0] == '=' || f[0] == '@') f++;
    int ok = view->itemsize == itemsize && strchr(fmt, f[0]) != NULL && f[1] == '\0';
    if (!ok || (count >= 0 && view->len != count * itemsize)) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd items of format %s, got %zd bytes of format %s", name,
                     count, fmt, view->len, f);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *pixel_stats(PyObject *self, PyObject *args) {
    PyObject *o[8];
    if (!PyArg_ParseTuple(args, "OOOOOOOO", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7])) return NULL;
    Py_buffer v[8];
    static const char *names[8] = {"img", "sq_rg", "sq_b", "sat", "luma_hist", "rg_hist", "yb_hist", "lap_hist"};
    static const Py_ssize_t counts[8] = {-1, 65536, 256, 65536, 256, 511, 1021, 2041};
    int got = 0;
    for (; got < 8; got++) {
        const char *fmt = got == 0 ? "B" : got < 4 ? "f" : "lq";
        Py_ssize_t isz = got == 0 ? 1 : got < 4 ? 4 : 8;
        if (get_buffer(o[got], &v[got], names[got], fmt, isz, counts[got], got >= 4) < 0) goto fail;
    }
    if (v[0].ndim != 3 || v[0].shape[2] != 3) {
        PyErr_SetString(PyExc_ValueError, "img must be a uint8 RGB image [H, W, 3]");
        goto fail;
    }
    {
        const Py_ssize_t h = v[0].shape[0], w = v[0].shape[1], n = h * w;
        const uint8_t *px = (const uint8_t *)v[0].buf;
        const float *sq_rg = (const float *)v[1].buf, *sq_b = (const float *)v[2].buf;
        const float *sat = (const float *)v[3].buf;
        int64_t *luma_h = (int64_t *)v[4].buf, *rg_h = (int64_t *)v[5].buf, *yb_h = (int64_t *)v[6].buf;
        int64_t *lap_h = (int64_t *)v[7].buf;
        double bright = 0.0, satsum = 0.0;
        int64_t spread = 0;
        uint8_t *luma = (uint8_t *)malloc(n > 0 ? (size_t)n : 1);
        if (!luma) {
            PyErr_NoMemory();
            goto fail;
        }
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t y = 0; y < h; y++) {
            /* per-row partial sums keep the double accumulations short */
            double brow = 0.0, srow = 0.0;
            int64_t sprow = 0;
            const uint8_t *p = px + (size_t)y * (size_t)w * 3;
            uint8_t *l = luma + (size_t)y * (size_t)w;
            for (Py_ssize_t x = 0; x < w; x++) {
                const unsigned r = p[3 * x], g = p[3 * x + 1], b = p[3 * x + 2];
                const unsigned lv = (77u * r + 150u * g + 29u * b + 128u) >> 8;
                l[x] = (uint8_t)lv;
                luma_h[lv]++;
                rg_h[r + 255u - g]++;
                yb_h[r + g + 510u - 2u * b]++;
                brow += (double)sqrtf(sq_rg[(r << 8) | g] + sq_b[b]);
                const unsigned hi = r > g ? (r > b ? r : b) : (g > b ? g : b);
                const unsigned lo = r < g ? (r < b ? r : b) : (g < b ? g : b);
                sprow += (int64_t)(hi - lo);
                srow += (double)sat[(hi << 8) | lo];
            }
            bright += brow;
            satsum += srow;
            spread += sprow;
        }
        if (h >= 3 && w >= 3) {
            for (Py_ssize_t y = 1; y < h - 1; y++) {
                const uint8_t *up = luma + (size_t)(y - 1) * (size_t)w, *c = up + w, *dn = c + w;
                for (Py_ssize_t x = 1; x < w - 1; x++) {
                    const int lap = 4 * (int)c[x] - (int)up[x] - (int)dn[x] - (int)c[x - 1] - (int)c[x + 1];
                    lap_h[lap + 1020]++;
                }
            }
        }
        Py_END_ALLOW_THREADS
        free(luma);
        for (int i = 0; i < 8; i++) PyBuffer_Release(&v[i]);
        return Py_BuildValue("ddL", bright, satsum, (long long)spread);
    }
fail:
    for (int i = 0; i < got; i++) PyBuffer_Release(&v[i]);
    return NULL;
}

static PyMethodDef methods[] = {
    {"pixel_stats", pixel_stats, METH_VARARGS, "One pass over a uint8 RGB image: see kernels/_pixel_stats.c."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_pixel_stats", NULL, -1, methods};

PyMODINIT_FUNC PyInit__pixel_stats(void) { return PyModule_Create(&module); }
