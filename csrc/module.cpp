// The Python module yolo13_attn._C of a `YOLO13_ATTN_BUILD_CUDA=1 pip install` (and of the just-in-time build):
// empty on purpose. Loading the shared library runs the TORCH_LIBRARY registrations of the .cu files, which
// define the torch.ops.yolo13_attn.cuda_* operators; yolo13_attn/cuda_ops/ adds their fake implementations
// and autograd.
#include <Python.h>

#ifndef TORCH_EXTENSION_NAME
#define TORCH_EXTENSION_NAME _C
#endif
#define YOLO13_CONCAT_(a, b) a##b
#define YOLO13_CONCAT(a, b) YOLO13_CONCAT_(a, b)
#define YOLO13_STR_(a) #a
#define YOLO13_STR(a) YOLO13_STR_(a)

static struct PyModuleDef yolo13_attn_module = {
    PyModuleDef_HEAD_INIT, YOLO13_STR(TORCH_EXTENSION_NAME),
    "CUDA kernels of yolo13_attn; importing registers the torch.ops.yolo13_attn.cuda_* operators", -1, nullptr};

PyMODINIT_FUNC YOLO13_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) { return PyModule_Create(&yolo13_attn_module); }
