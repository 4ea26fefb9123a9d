/* Stack sweeps over the ranges of one thread, in C.
 *
 * Two questions a report asks of every host range of a big trace: which range encloses it (its
 * parent, qtrace.tracefile.nesting) and which range is innermost over each stretch of a thread's
 * time (the exposed-time segments, qtrace.analyzers.segments). Both are one pass of a stack over
 * the ranges in sweep order (start, then longest first); each module's reference loop
 * (parents_loop, sweep_segments_loop) is that pass in Python. Here it runs on the arrays
 * themselves: the numpy versions answer the same questions level by level in O(n log n) and stay
 * for a machine without a C compiler. tests/test_stack_sweeps.py holds the three equal.
 *
 * Arrays come in through the buffer protocol (the callers pass C-contiguous float64, int64 and
 * int32 numpy arrays and check their dtypes); outputs are written into arrays the caller made.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* parents(ends, group_start, eps, out): per position i of the sweep order, the position of its
 * parent, or -1. ends: float64; group_start: int64, the first position of i's thread (the stack
 * starts empty on each thread); out: int64, written. As parents_loop: a range pops the open
 * ranges that end before its own end minus eps and nests in the one left on top. */
static PyObject *parents(PyObject *self, PyObject *args) {
    Py_buffer ends, group, out;
    double eps;
    if (!PyArg_ParseTuple(args, "y*y*dw*", &ends, &group, &eps, &out)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = ends.len / (Py_ssize_t)sizeof(double);
    int64_t *stack = NULL;
    if (ends.len != n * (Py_ssize_t)sizeof(double) || group.len != n * (Py_ssize_t)sizeof(int64_t)
        || out.len != n * (Py_ssize_t)sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "parents: arrays of unequal lengths");
        goto done;
    }
    stack = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(int64_t));
    if (!stack) {
        PyErr_NoMemory();
        goto done;
    }
    const double *e = ends.buf;
    const int64_t *g = group.buf;
    int64_t *o = out.buf;
    Py_ssize_t top = 0;
    int64_t current = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (g[i] != current) { /* a new thread */
            current = g[i];
            top = 0;
        }
        double lim = e[i] - eps;
        while (top && e[stack[top - 1]] < lim) top--;
        o[i] = top ? stack[top - 1] : -1;
        stack[top++] = i;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    PyMem_Free(stack);
    PyBuffer_Release(&ends);
    PyBuffer_Release(&group);
    PyBuffer_Release(&out);
    return result;
}

/* innermost(starts, ends, seg_start, seg_event) -> (count, last_end): the segments of one
 * thread's ranges sorted by (start, longest first), as sweep_segments_loop makes them, with each
 * segment's innermost range as its position (-1: inside none) instead of its phase. starts, ends:
 * float64; seg_start (float64) and seg_event (int32), of room for 2n + 1 segments, are written.
 * The segments tile [starts[0], last_end): each ends where the next begins. */
static PyObject *innermost(PyObject *self, PyObject *args) {
    Py_buffer starts, ends, seg_start, seg_event;
    if (!PyArg_ParseTuple(args, "y*y*w*w*", &starts, &ends, &seg_start, &seg_event)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = starts.len / (Py_ssize_t)sizeof(double);
    double *stack_end = NULL;
    int32_t *stack_who = NULL;
    Py_ssize_t room = 2 * n + 1;
    if (starts.len != n * (Py_ssize_t)sizeof(double) || ends.len != starts.len
        || seg_start.len < room * (Py_ssize_t)sizeof(double) || seg_event.len < room * (Py_ssize_t)sizeof(int32_t)
        || n > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "innermost: arrays of unequal or too small lengths");
        goto done;
    }
    stack_end = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(double));
    stack_who = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(int32_t));
    if (!stack_end || !stack_who) {
        PyErr_NoMemory();
        goto done;
    }
    const double *s = starts.buf, *e = ends.buf;
    double *out_s = seg_start.buf;
    int32_t *out_w = seg_event.buf;
    Py_ssize_t count = 0, top = 0;
    double cursor = n ? s[0] : 0.0;
    for (Py_ssize_t i = 0; i < n; i++) {
        double ts = s[i], end = e[i];
        while (top && stack_end[top - 1] <= ts) {
            top--;
            if (stack_end[top] > cursor) {
                out_s[count] = cursor;
                out_w[count++] = stack_who[top];
                cursor = stack_end[top];
            }
        }
        if (ts > cursor) {
            out_s[count] = cursor;
            out_w[count++] = top ? stack_who[top - 1] : -1;
            cursor = ts;
        }
        stack_end[top] = ts > end ? ts : end;
        stack_who[top++] = (int32_t)i;
    }
    while (top) {
        top--;
        if (stack_end[top] > cursor) {
            out_s[count] = cursor;
            out_w[count++] = stack_who[top];
            cursor = stack_end[top];
        }
    }
    result = Py_BuildValue("(nd)", count, cursor);
done:
    PyMem_Free(stack_end);
    PyMem_Free(stack_who);
    PyBuffer_Release(&starts);
    PyBuffer_Release(&ends);
    PyBuffer_Release(&seg_start);
    PyBuffer_Release(&seg_event);
    return result;
}

static PyMethodDef methods[] = {
    {"parents", parents, METH_VARARGS, "Parent position of each range in sweep order (see nesting.parents)."},
    {"innermost", innermost, METH_VARARGS, "Segments of one thread and the innermost range of each."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_stack_sweeps", "Stack sweeps over the ranges of one thread, in C.", -1, methods,
};

PyMODINIT_FUNC PyInit__stack_sweeps(void) { return PyModule_Create(&module); }
