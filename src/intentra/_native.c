/*
 * intentra._native: the per-datagram path of intentra in C (docs/native.md).
 *
 * Owns: AES-256-GCM through OpenSSL's EVP interface (the AESGCM type, a drop-in
 * for the part of cryptography's AESGCM that core/aead.py uses, and seal_packet:
 * a whole datagram, header and nonce from the pn included), the receive loop of
 * docs/protocol.md section 6 over a batch of datagrams (Receiver), a recvmmsg/GRO
 * socket reader (Reader), and the packing of small messages into one DATA packet
 * during a flush (Packer; core/packing.py is its reference).
 *
 * Never: keeps protocol state of its own. Every value the receive order reads
 * or changes (token bucket, replay window, receive keys, the pn
 * acknowledgement state, ACK decisions, counters, events) lives in the Python
 * objects of the core (core/session.py and the modules it uses); this file
 * reads and writes those objects in place, so the pure-Python core stays the
 * one reference and both paths share one state. What this file does not handle
 * itself (handshakes, ACK and CLOSE bodies, RELIABLE delivery, key updates,
 * roaming, violations, bit 2 of header byte 1) it hands to the Python core at
 * the step where the Python path would do the same, with nothing changed yet.
 *
 * Never: implements AES itself; hand-written cryptography has no place here.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/opensslv.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif

/* docs/protocol.md sections 2 and 3 */
#define VERSION 2
#define HEADER_LEN 16
#define TAG_LEN 16
#define NONCE_LEN 12
#define KEY_LEN 32
#define MAX_PACKET_SIZE 2048
#define T_DATA 0
#define T_ACK 1
#define T_HS 2
#define T_CLOSE 3
#define RELIABLE 0
#define REALTIME 1
#define ACK_PAYLOAD_LEN 28
#define CLOSE_PAYLOAD_LEN 1
#define X_BIT 0x04 /* bit 2 of byte 1: zero in protocol version 2 (issue 10 will use it) */

/* Datagram cut for the core, as aio/datapath.py's RECEIVE_CAP (oversize either way). */
#define RECEIVE_CAP (MAX_PACKET_SIZE + 1)
#define GRO_BUFFER (65535 + MAX_PACKET_SIZE)

static PyObject *InvalidTag; /* cryptography.exceptions.InvalidTag */
/* AES-GCM opens tried, by any key of this process: tests count the cost of forgeries. */
static unsigned long long aead_opens_total;

/* ===================================================================== AESGCM */

typedef struct {
    PyObject_HEAD
    unsigned char key[KEY_LEN];
    EVP_CIPHER_CTX *enc; /* made on first use: a receive key never seals */
    EVP_CIPHER_CTX *dec;
} AeadObject;

static PyTypeObject AeadType;

static EVP_CIPHER_CTX *
aead_ctx(AeadObject *self, int encrypt)
{
    EVP_CIPHER_CTX **slot = encrypt ? &self->enc : &self->dec;
    if (*slot != NULL)
        return *slot;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL)
        return NULL;
    if (!EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL, encrypt)
        || !EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, NONCE_LEN, NULL)
        || !EVP_CipherInit_ex(ctx, NULL, NULL, self->key, NULL, encrypt)) {
        EVP_CIPHER_CTX_free(ctx);
        return NULL;
    }
    *slot = ctx;
    return ctx;
}

/* Seal ptlen bytes into out (ptlen + TAG_LEN bytes). 0 on success. */
static int
aead_seal(AeadObject *self, const unsigned char *nonce, const unsigned char *aad,
          int aadlen, const unsigned char *pt, int ptlen, unsigned char *out)
{
    int n = 0, m = 0;
    EVP_CIPHER_CTX *ctx = aead_ctx(self, 1);
    if (ctx == NULL)
        return -1;
    if (!EVP_CipherInit_ex(ctx, NULL, NULL, NULL, nonce, 1))
        return -1;
    if (aadlen > 0 && !EVP_CipherUpdate(ctx, NULL, &n, aad, aadlen))
        return -1;
    if (!EVP_CipherUpdate(ctx, out, &n, pt, ptlen))
        return -1;
    if (!EVP_CipherFinal_ex(ctx, out + n, &m))
        return -1;
    if (!EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_LEN, out + ptlen))
        return -1;
    return 0;
}

/* Open ctlen bytes (ciphertext and tag) into out (ctlen - TAG_LEN bytes).
 * 1: authentic, 0: not, -1: an OpenSSL failure. */
static int
aead_open(AeadObject *self, const unsigned char *nonce, const unsigned char *aad, int aadlen,
          const unsigned char *ct, int ctlen, unsigned char *out)
{
    int n = 0, m = 0;
    aead_opens_total++;
    if (ctlen < TAG_LEN)
        return 0;
    EVP_CIPHER_CTX *ctx = aead_ctx(self, 0);
    if (ctx == NULL)
        return -1;
    if (!EVP_CipherInit_ex(ctx, NULL, NULL, NULL, nonce, 0))
        return -1;
    if (!EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_LEN,
                             (void *)(ct + ctlen - TAG_LEN)))
        return -1;
    if (aadlen > 0 && !EVP_CipherUpdate(ctx, NULL, &n, aad, aadlen))
        return -1;
    if (!EVP_CipherUpdate(ctx, out, &n, ct, ctlen - TAG_LEN))
        return -1;
    return EVP_CipherFinal_ex(ctx, out + n, &m) > 0 ? 1 : 0;
}

static int
Aead_init(AeadObject *self, PyObject *args, PyObject *kwds)
{
    Py_buffer key;
    static char *kwlist[] = {"key", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*", kwlist, &key))
        return -1;
    if (key.len != KEY_LEN) {
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_ValueError, "AESGCM key must be 32 bytes (AES-256)");
        return -1;
    }
    memcpy(self->key, key.buf, KEY_LEN);
    PyBuffer_Release(&key);
    if (self->enc != NULL) {
        EVP_CIPHER_CTX_free(self->enc);
        self->enc = NULL;
    }
    if (self->dec != NULL) {
        EVP_CIPHER_CTX_free(self->dec);
        self->dec = NULL;
    }
    return 0;
}

static void
Aead_dealloc(AeadObject *self)
{
    if (self->enc != NULL)
        EVP_CIPHER_CTX_free(self->enc);
    if (self->dec != NULL)
        EVP_CIPHER_CTX_free(self->dec);
    OPENSSL_cleanse(self->key, KEY_LEN);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
nonce_arg(Py_buffer *nonce)
{
    if (nonce->len != NONCE_LEN) {
        PyErr_SetString(PyExc_ValueError, "nonce must be 12 bytes");
        return -1;
    }
    return 0;
}

static PyObject *
Aead_encrypt(AeadObject *self, PyObject *args)
{
    Py_buffer nonce, data, aad;
    PyObject *out = NULL;
    if (!PyArg_ParseTuple(args, "y*y*y*", &nonce, &data, &aad))
        return NULL;
    if (nonce_arg(&nonce) < 0)
        goto done;
    if (data.len > INT_MAX - TAG_LEN || aad.len > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "data or associated data too long");
        goto done;
    }
    out = PyBytes_FromStringAndSize(NULL, data.len + TAG_LEN);
    if (out == NULL)
        goto done;
    if (aead_seal(self, nonce.buf, aad.buf, (int)aad.len, data.buf, (int)data.len,
                  (unsigned char *)PyBytes_AS_STRING(out)) < 0) {
        Py_CLEAR(out);
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL AES-256-GCM seal failed");
    }
done:
    PyBuffer_Release(&nonce);
    PyBuffer_Release(&data);
    PyBuffer_Release(&aad);
    return out;
}

static PyObject *
Aead_decrypt(AeadObject *self, PyObject *args)
{
    Py_buffer nonce, data, aad;
    PyObject *out = NULL;
    if (!PyArg_ParseTuple(args, "y*y*y*", &nonce, &data, &aad))
        return NULL;
    if (nonce_arg(&nonce) < 0)
        goto done;
    if (data.len < TAG_LEN) {
        aead_opens_total++;
        PyErr_SetNone(InvalidTag);
        goto done;
    }
    if (data.len > INT_MAX || aad.len > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "data or associated data too long");
        goto done;
    }
    out = PyBytes_FromStringAndSize(NULL, data.len - TAG_LEN);
    if (out == NULL)
        goto done;
    int ok = aead_open(self, nonce.buf, aad.buf, (int)aad.len, data.buf, (int)data.len,
                       (unsigned char *)PyBytes_AS_STRING(out));
    if (ok != 1) {
        Py_CLEAR(out);
        if (ok == 0)
            PyErr_SetNone(InvalidTag);
        else
            PyErr_SetString(PyExc_RuntimeError, "OpenSSL AES-256-GCM open failed");
    }
done:
    PyBuffer_Release(&nonce);
    PyBuffer_Release(&data);
    PyBuffer_Release(&aad);
    return out;
}

/* seal_packet(b0, b1, conn_id, pn, ack, plaintext) -> datagram: the header of
 * docs/protocol.md section 3 (b0, b1, len(plaintext), conn_id, pn mod 2^32, ack),
 * then the plaintext sealed under nonce conn_id (4) || pn (8) with the header as
 * associated data; in one bytes object, the datagram as sent. core/aead.py's
 * SendKeys.seal_packet does the same in Python (struct and encrypt). */
static PyObject *
Aead_seal_packet(AeadObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "seal_packet(b0, b1, conn_id, pn, ack, plaintext) takes 6 arguments");
        return NULL;
    }
    long b0 = PyLong_AsLong(args[0]);
    long b1 = PyLong_AsLong(args[1]);
    unsigned long long conn_id = PyLong_AsUnsignedLongLong(args[2]);
    unsigned long long pn = PyLong_AsUnsignedLongLong(args[3]);
    unsigned long long ack = PyLong_AsUnsignedLongLong(args[4]);
    if (PyErr_Occurred())
        return NULL;
    if (b0 < 0 || b0 > 0xFF || b1 < 0 || b1 > 0xFF || conn_id > 0xFFFFFFFFULL
        || ack > 0xFFFFFFFFULL) {
        PyErr_SetString(PyExc_OverflowError, "a header field is out of range");
        return NULL;
    }
    PyObject *pt = args[5];
    if (!PyBytes_Check(pt)) {
        PyErr_SetString(PyExc_TypeError, "plaintext must be bytes");
        return NULL;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(pt);
    if (n > 0xFFFF) {
        PyErr_SetString(PyExc_OverflowError, "plaintext longer than 65535 bytes");
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, HEADER_LEN + n + TAG_LEN);
    if (out == NULL)
        return NULL;
    unsigned char *d = (unsigned char *)PyBytes_AS_STRING(out);
    uint32_t seq = (uint32_t)pn;
    d[0] = (unsigned char)b0;
    d[1] = (unsigned char)b1;
    d[2] = (unsigned char)(n >> 8);
    d[3] = (unsigned char)n;
    d[4] = (unsigned char)(conn_id >> 24);
    d[5] = (unsigned char)(conn_id >> 16);
    d[6] = (unsigned char)(conn_id >> 8);
    d[7] = (unsigned char)conn_id;
    d[8] = (unsigned char)(seq >> 24);
    d[9] = (unsigned char)(seq >> 16);
    d[10] = (unsigned char)(seq >> 8);
    d[11] = (unsigned char)seq;
    d[12] = (unsigned char)(ack >> 24);
    d[13] = (unsigned char)(ack >> 16);
    d[14] = (unsigned char)(ack >> 8);
    d[15] = (unsigned char)ack;
    unsigned char nonce[NONCE_LEN];
    memcpy(nonce, d + 4, 4);
    for (int i = 0; i < 8; i++)
        nonce[4 + i] = (unsigned char)(pn >> (56 - 8 * i));
    if (aead_seal(self, nonce, d, HEADER_LEN, (const unsigned char *)PyBytes_AS_STRING(pt),
                  (int)n, d + HEADER_LEN) < 0) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL AES-256-GCM seal failed");
        return NULL;
    }
    return out;
}

static PyMethodDef Aead_methods[] = {
    {"encrypt", (PyCFunction)Aead_encrypt, METH_VARARGS,
     "encrypt(nonce, data, associated_data) -> ciphertext || tag"},
    {"decrypt", (PyCFunction)Aead_decrypt, METH_VARARGS,
     "decrypt(nonce, data, associated_data) -> plaintext; raises InvalidTag"},
    {"seal_packet", (PyCFunction)(void (*)(void))Aead_seal_packet, METH_FASTCALL,
     "seal_packet(b0, b1, conn_id, pn, ack, plaintext) -> header || ciphertext || tag"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject AeadType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "intentra._native.AESGCM",
    .tp_basicsize = sizeof(AeadObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "AES-256-GCM on OpenSSL EVP, one key; the interface core/aead.py uses.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Aead_init,
    .tp_dealloc = (destructor)Aead_dealloc,
    .tp_methods = Aead_methods,
};

/* ===================================================================== Packer */

/* The plaintext of one X = 0 REALTIME DATA packet being filled during a flush
 * (core/packing.py's Packer is the reference: the same interface and results).
 * take() moves plain messages (lane 0, whole, not late) from the head of one
 * priority level's queue, as Session._flush_queue's loop did message by
 * message; whatever is not plain is left at the head for the Python core. */
#define LEN_PREFIX 2

#define RSEQ_LEN 4
#define SEQ_MASK 0xFFFFFFFFULL

typedef struct {
    PyObject_HEAD
    Py_ssize_t size;  /* plaintext bytes of the packet being filled (RELIABLE: with rseq) */
    Py_ssize_t sent;  /* messages taken, this flush */
    Py_ssize_t taken; /* LEN_PREFIX + length of each message taken, this flush */
    Py_ssize_t count; /* messages in the packet being filled */
    int prio;         /* the packet's priority */
    int reliable;     /* a RELIABLE packet: rseq of the first message, then the messages */
    unsigned long long first; /* RELIABLE: the rseq of the packet's first message */
    unsigned char buf[MAX_PACKET_SIZE];
} PackerObject;

static PyObject *str_popleft, *str_assign;

static int
Packer_init(PackerObject *self, PyObject *args, PyObject *kwds)
{
    int reliable = 0;
    static char *kwlist[] = {"reliable", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|p", kwlist, &reliable))
        return -1;
    self->reliable = reliable;
    self->size = reliable ? RSEQ_LEN : 0;
    self->sent = self->taken = self->count = 0;
    self->prio = 0;
    self->first = 0;
    return 0;
}

/* take(q, level, now, deadline, limit, small) -> 0 the queue is empty, 1 its head is
 * not plain (late, on a lane, or larger than small), 2 the packet is full (the
 * head does not fit in what is left of limit). */
static PyObject *
Packer_take(PackerObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "take(q, level, now, deadline, limit, small) takes 6 arguments");
        return NULL;
    }
    PyObject *q = args[0];
    long level = PyLong_AsLong(args[1]);
    double now = PyFloat_AsDouble(args[2]);
    double deadline = PyFloat_AsDouble(args[3]);
    Py_ssize_t limit = PyLong_AsSsize_t(args[4]);
    Py_ssize_t small = PyLong_AsSsize_t(args[5]);
    if (PyErr_Occurred())
        return NULL;
    if (limit < 0 || limit > MAX_PACKET_SIZE) {
        PyErr_SetString(PyExc_ValueError, "limit must be between 0 and MAX_PACKET_SIZE");
        return NULL;
    }
    for (;;) {
        Py_ssize_t len = PySequence_Size(q);
        if (len < 0)
            return NULL;
        if (len == 0)
            return PyLong_FromLong(0);
        PyObject *head = PySequence_GetItem(q, 0);
        if (head == NULL)
            return NULL;
        if (!PyTuple_CheckExact(head) || PyTuple_GET_SIZE(head) != 3
            || !PyBytes_CheckExact(PyTuple_GET_ITEM(head, 0))) {
            Py_DECREF(head);
            PyErr_SetString(PyExc_TypeError, "a queued REALTIME message must be a tuple "
                                             "(bytes, queued_at, lane), as enqueue makes it");
            return NULL;
        }
        PyObject *data = PyTuple_GET_ITEM(head, 0);
        double queued_at = PyFloat_AsDouble(PyTuple_GET_ITEM(head, 1));
        int lane = PyObject_IsTrue(PyTuple_GET_ITEM(head, 2));
        if ((queued_at == -1.0 && PyErr_Occurred()) || lane < 0) {
            Py_DECREF(head);
            return NULL;
        }
        Py_ssize_t n = PyBytes_GET_SIZE(data);
        Py_ssize_t need = LEN_PREFIX + n;
        if (now - queued_at > deadline || lane || n > small) {
            Py_DECREF(head);
            return PyLong_FromLong(1);
        }
        if (self->count && self->size + need > limit) {
            Py_DECREF(head);
            return PyLong_FromLong(2);
        }
        if (need > MAX_PACKET_SIZE - self->size) {
            Py_DECREF(head);
            PyErr_SetString(PyExc_ValueError, "a message larger than the packet buffer");
            return NULL;
        }
        /* data stays alive through head while the queue lets go of it */
        PyObject *popped = PyObject_CallMethodNoArgs(q, str_popleft);
        if (popped == NULL) {
            Py_DECREF(head);
            return NULL;
        }
        Py_DECREF(popped);
        if (self->count == 0)
            self->prio = (int)level;
        unsigned char *p = self->buf + self->size;
        p[0] = (unsigned char)(n >> 8);
        p[1] = (unsigned char)n;
        memcpy(p + LEN_PREFIX, PyBytes_AS_STRING(data), (size_t)n);
        Py_DECREF(head);
        self->size += need;
        self->taken += need;
        self->sent += 1;
        self->count += 1;
    }
}

/* take_reliable(olane, window, now, rto, room, single, small, limit) -> (status, taken):
 * whole lane-0 RELIABLE messages from the head of olane.queue, each given its rseq
 * by window.assign(data, priority, now, rto), as Session._flush_queue's loop
 * (docs/protocol.md section 14.8: a lane alone at its level is drained without a
 * turn per message). status 0: stop here (the lane's turn is over: not single, no
 * room, or the head is too large), 1: the lane's level must move (olane.relevel()
 * is the caller's), 2: the packet is full. taken: messages taken by this call. */
static PyObject *
Packer_take_reliable(PackerObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "take_reliable(olane, window, now, rto, room, "
                                         "single, small, limit) takes 8 arguments");
        return NULL;
    }
    if (!self->reliable) {
        PyErr_SetString(PyExc_ValueError, "take_reliable on a REALTIME packer");
        return NULL;
    }
    PyObject *olane = args[0], *window = args[1], *now = args[2], *rto = args[3];
    Py_ssize_t room = PyLong_AsSsize_t(args[4]);
    int single = PyObject_IsTrue(args[5]);
    Py_ssize_t small = PyLong_AsSsize_t(args[6]);
    Py_ssize_t limit = PyLong_AsSsize_t(args[7]);
    if (PyErr_Occurred() || single < 0)
        return NULL;
    if (limit < RSEQ_LEN || limit > MAX_PACKET_SIZE) {
        PyErr_SetString(PyExc_ValueError, "limit must be between RSEQ_LEN and MAX_PACKET_SIZE");
        return NULL;
    }
    PyObject *queue = PyObject_GetAttrString(olane, "queue");
    PyObject *counts = queue ? PyObject_GetAttrString(olane, "counts") : NULL;
    PyObject *level_obj = counts ? PyObject_GetAttrString(olane, "level") : NULL;
    PyObject *result = NULL, *head = NULL;
    Py_ssize_t taken = 0;
    int status = 0;
    if (level_obj == NULL)
        goto done;
    long lane_level = PyLong_AsLong(level_obj);
    if (lane_level == -1 && PyErr_Occurred())
        goto done;
    if (!PyList_CheckExact(counts)) {
        PyErr_SetString(PyExc_TypeError, "olane.counts must be a list");
        goto done;
    }
    for (;;) {
        head = PySequence_GetItem(queue, 0);
        if (head == NULL)
            goto done;
        if (!PyTuple_CheckExact(head) || PyTuple_GET_SIZE(head) != 2
            || !PyBytes_CheckExact(PyTuple_GET_ITEM(head, 0))) {
            PyErr_SetString(PyExc_TypeError, "a queued RELIABLE message must be a tuple "
                                             "(bytes, priority), as enqueue makes it");
            goto done;
        }
        PyObject *data = PyTuple_GET_ITEM(head, 0), *prio_obj = PyTuple_GET_ITEM(head, 1);
        long prio = PyLong_AsLong(prio_obj);
        if (prio == -1 && PyErr_Occurred())
            goto done;
        if (prio < 0 || prio >= PyList_GET_SIZE(counts)) {
            PyErr_SetString(PyExc_ValueError, "a priority without its count");
            goto done;
        }
        Py_ssize_t n = PyBytes_GET_SIZE(data);
        Py_ssize_t need = LEN_PREFIX + n;
        if (taken && n > small) { /* the first head was checked by the caller */
            status = 0;
            break;
        }
        if (self->count && self->size + need > limit) {
            status = 2;
            break;
        }
        if (need > MAX_PACKET_SIZE - self->size) {
            PyErr_SetString(PyExc_ValueError, "a message larger than the packet buffer");
            goto done;
        }
        PyObject *popped = PyObject_CallMethodNoArgs(queue, str_popleft);
        if (popped == NULL)
            goto done;
        Py_DECREF(popped);
        PyObject *rseq_obj = PyObject_CallMethodObjArgs(window, str_assign, data, prio_obj, now,
                                                        rto, NULL);
        if (rseq_obj == NULL)
            goto done;
        unsigned long long rseq = PyLong_AsUnsignedLongLong(rseq_obj);
        Py_DECREF(rseq_obj);
        if (PyErr_Occurred())
            goto done;
        if (self->count == 0) {
            self->first = rseq & SEQ_MASK;
            self->prio = (int)prio;
        } else if (prio > self->prio) {
            self->prio = (int)prio;
        }
        unsigned char *p = self->buf + self->size;
        p[0] = (unsigned char)(n >> 8);
        p[1] = (unsigned char)n;
        memcpy(p + LEN_PREFIX, PyBytes_AS_STRING(data), (size_t)n);
        Py_CLEAR(head);
        self->size += need;
        self->taken += need;
        self->sent += 1;
        self->count += 1;
        room -= 1;
        taken += 1;
        PyObject *count_obj = PyList_GET_ITEM(counts, prio);
        long left = PyLong_AsLong(count_obj) - 1;
        if (left == -2 && PyErr_Occurred())
            goto done;
        PyObject *left_obj = PyLong_FromLong(left);
        if (left_obj == NULL)
            goto done;
        PyList_SetItem(counts, prio, left_obj); /* steals left_obj */
        if (!left && prio == lane_level) {
            status = 1;
            break;
        }
        if (!single || room <= 0) {
            status = 0;
            break;
        }
        /* the loop reads the next head: the queue holds it (counts say so) */
    }
    result = Py_BuildValue("(in)", status, taken);
done:
    Py_XDECREF(head);
    Py_XDECREF(queue);
    Py_XDECREF(counts);
    Py_XDECREF(level_obj);
    return result;
}

/* plaintext() -> the packet's plaintext; the packer is empty again. */
static PyObject *
Packer_plaintext(PackerObject *self, PyObject *unused)
{
    if (self->reliable) {
        uint32_t first = (uint32_t)self->first;
        self->buf[0] = (unsigned char)(first >> 24);
        self->buf[1] = (unsigned char)(first >> 16);
        self->buf[2] = (unsigned char)(first >> 8);
        self->buf[3] = (unsigned char)first;
    }
    PyObject *out = PyBytes_FromStringAndSize((const char *)self->buf, self->size);
    if (out != NULL) {
        self->size = self->reliable ? RSEQ_LEN : 0;
        self->prio = 0;
        self->count = 0;
        self->first = 0;
    }
    return out;
}

static PyMemberDef Packer_members[] = {
    {"size", T_PYSSIZET, offsetof(PackerObject, size), READONLY,
     "plaintext bytes of the packet being filled"},
    {"prio", T_INT, offsetof(PackerObject, prio), READONLY,
     "priority of the packet being filled (the level of its first message)"},
    {"count", T_PYSSIZET, offsetof(PackerObject, count), READONLY,
     "messages in the packet being filled"},
    {"first", T_ULONGLONG, offsetof(PackerObject, first), READONLY,
     "RELIABLE: the rseq of the packet's first message"},
    {"sent", T_PYSSIZET, offsetof(PackerObject, sent), 0, "messages taken"},
    {"taken", T_PYSSIZET, offsetof(PackerObject, taken), 0,
     "LEN_PREFIX + length of every message taken"},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef Packer_methods[] = {
    {"take", (PyCFunction)(void (*)(void))Packer_take, METH_FASTCALL,
     "take(q, level, now, deadline, limit, small) -> 0 empty, 1 head not plain, 2 full"},
    {"take_reliable", (PyCFunction)(void (*)(void))Packer_take_reliable, METH_FASTCALL,
     "take_reliable(olane, window, now, rto, room, single, small, limit) -> (status, taken)"},
    {"plaintext", (PyCFunction)Packer_plaintext, METH_NOARGS,
     "plaintext() -> bytes of the packet; empties the packer"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject PackerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "intentra._native.Packer",
    .tp_basicsize = sizeof(PackerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The plaintext of one X = 0 DATA packet being packed (core/packing.py).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Packer_init,
    .tp_members = Packer_members,
    .tp_methods = Packer_methods,
};

/* ============================================================ slot access */

/* A named attribute of a core object. Where the object's class declares it in
 * __slots__, it is read and written at its offset (the same storage Python code
 * uses, at the cost of a pointer access); otherwise through getattr/setattr. */
typedef struct {
    const char *cname;
    PyObject *name;
    PyTypeObject *type;
    Py_ssize_t offset;
    int resolved;
} Slot;

static void
slot_resolve(Slot *s, PyTypeObject *type)
{
    s->resolved = 1;
    PyObject *d = PyObject_GetAttr((PyObject *)type, s->name);
    if (d == NULL) {
        PyErr_Clear();
        return;
    }
    if (Py_TYPE(d) == &PyMemberDescr_Type) {
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        if (m->type == T_OBJECT_EX && !(m->flags & READONLY)) {
            s->type = type;
            s->offset = m->offset;
            Py_INCREF(type);
        }
    }
    Py_DECREF(d);
}

/* New reference, or NULL with an exception. */
static inline PyObject *
slot_get(Slot *s, PyObject *obj)
{
    PyTypeObject *type = Py_TYPE(obj);
    if (!s->resolved)
        slot_resolve(s, type);
    if (type == s->type) {
        PyObject *v = *(PyObject **)((char *)obj + s->offset);
        if (v != NULL) {
            Py_INCREF(v);
            return v;
        }
    }
    return PyObject_GetAttr(obj, s->name);
}

/* Steals nothing. 0, or -1 with an exception. */
static inline int
slot_set(Slot *s, PyObject *obj, PyObject *value)
{
    PyTypeObject *type = Py_TYPE(obj);
    if (!s->resolved)
        slot_resolve(s, type);
    if (type == s->type) {
        PyObject **p = (PyObject **)((char *)obj + s->offset);
        Py_INCREF(value);
        Py_XSETREF(*p, value);
        return 0;
    }
    return PyObject_SetAttr(obj, s->name, value);
}

/* Steals value (which may be NULL after a failed allocation). */
static inline int
slot_set_new(Slot *s, PyObject *obj, PyObject *value)
{
    if (value == NULL)
        return -1;
    int r = slot_set(s, obj, value);
    Py_DECREF(value);
    return r;
}

static inline int
slot_double(Slot *s, PyObject *obj, double *out)
{
    PyObject *v = slot_get(s, obj);
    if (v == NULL)
        return -1;
    *out = PyFloat_AsDouble(v);
    Py_DECREF(v);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

/* An int attribute that must fit 64 bits; 1 if it does not (the caller hands
 * the packet to Python), -1 on error. */
static inline int
slot_u64(Slot *s, PyObject *obj, uint64_t *out)
{
    PyObject *v = slot_get(s, obj);
    if (v == NULL)
        return -1;
    if (!PyLong_Check(v)) {
        Py_DECREF(v);
        return 1;
    }
    *out = PyLong_AsUnsignedLongLong(v);
    Py_DECREF(v);
    if (*out == (uint64_t)-1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            return 1;
        }
        return -1;
    }
    return 0;
}

/* 1 if the attribute is None, 0 if not, -1 on error. */
static inline int
slot_is_none(Slot *s, PyObject *obj)
{
    PyObject *v = slot_get(s, obj);
    if (v == NULL)
        return -1;
    int r = v == Py_None;
    Py_DECREF(v);
    return r;
}

/* Truth of the attribute; -1 on error. */
static inline int
slot_true(Slot *s, PyObject *obj)
{
    PyObject *v = slot_get(s, obj);
    if (v == NULL)
        return -1;
    int r = PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

enum {
    /* Session */
    S_RECV_KEYS, S_BUCKET, S_ADDR, S_REPLAY, S_LAST_RECV_AT, S_PATH_BUDGET, S_CONFIRMED,
    S_SEND_WINDOW, S_ACK_AT, S_ACK_NOW, S_RX_LARGEST, S_RX_BITS, S_RX_LARGEST_AT,
    S_LAST_ACK_LARGEST, S_TIMER_AT, S_RECOVERY, S_RETRANSMIT, S_QUEUED, S_STATE,
    /* TokenBucket */
    B_TOKENS, B_UPDATED_AT, B_RATE, B_BURST,
    /* ReplayWindow */
    R_HIGHEST, R_BITS, R_SIZE,
    /* ReceiveKeys */
    K_PHASE, K_PREV, K_FIRST_PN, K_PREV_EXPIRES_AT, K_CUR, K_NEXT, K_NEXT_KEY, K_FACTORY,
    /* SendWindow, Recovery */
    W_ACKED, V_IN_FLIGHT,
    NSLOTS
};

static const char *slot_names[NSLOTS] = {
    "recv_keys", "bucket", "addr", "replay", "last_recv_at", "path_budget", "confirmed",
    "send_window", "ack_at", "ack_now", "rx_largest", "rx_bits", "rx_largest_at",
    "last_ack_largest", "timer_at", "recovery", "retransmit", "queued", "state",
    "tokens", "updated_at", "rate", "burst",
    "highest", "_bits", "size",
    "phase", "_prev", "first_pn_current", "prev_expires_at", "_cur", "_next", "_next_key",
    "_factory",
    "acked", "in_flight",
};

/* ================================================================ header */

typedef struct {
    int ptype, intent, priority, key_phase, eliciting;
    uint32_t payload_len, conn_id, seq, ack;
} Header;

enum { H_MALFORMED = 0, H_OK = 1, H_PYTHON = 2 };

static inline uint32_t
be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void
put_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* docs/protocol.md section 3, rules 1-5, in core/wire.py's parse_header order.
 * HS and any datagram with bit 2 of byte 1 set go to the Python core whole
 * (H_PYTHON): it owns the handshake, and the meaning of that bit belongs to the
 * Python core (today a malformed header, which it drops and counts). */
static int
parse_header(const unsigned char *d, Py_ssize_t n, Header *h)
{
    if (n < HEADER_LEN || n > MAX_PACKET_SIZE)
        return H_MALFORMED;
    if (d[0] >> 4 != VERSION)
        return H_MALFORMED;
    int b1 = d[1];
    if (b1 & X_BIT)
        return H_PYTHON;
    h->ptype = d[0] & 0x0F;
    h->intent = b1 >> 6;
    h->priority = (b1 >> 3) & 0x07;
    h->key_phase = b1 & 0x01;
    h->eliciting = (b1 >> 1) & 0x01;
    h->payload_len = ((uint32_t)d[2] << 8) | d[3];
    h->conn_id = be32(d + 4);
    h->seq = be32(d + 8);
    h->ack = be32(d + 12);
    if (h->ptype > T_CLOSE || h->intent > REALTIME)
        return H_MALFORMED;
    if (h->ptype == T_HS)
        return H_PYTHON;
    if (h->ptype == T_DATA) {
        if (n != HEADER_LEN + (Py_ssize_t)h->payload_len + TAG_LEN
            || h->payload_len < (h->intent == RELIABLE ? 7u : 3u))
            return H_MALFORMED;
        if (h->conn_id == 0 || (h->intent == RELIABLE && !h->eliciting))
            return H_MALFORMED;
        return H_OK;
    }
    if (h->intent != RELIABLE || h->priority != 0)
        return H_MALFORMED;
    if (n != HEADER_LEN + (Py_ssize_t)h->payload_len + TAG_LEN || h->conn_id == 0)
        return H_MALFORMED;
    if (h->ptype == T_ACK)
        return h->payload_len == ACK_PAYLOAD_LEN ? H_OK : H_MALFORMED;
    /* CLOSE */
    if (h->payload_len != CLOSE_PAYLOAD_LEN || h->ack || h->eliciting)
        return H_MALFORMED;
    return H_OK;
}

/* core/wire.py recover_pn (RFC 9000 A.3, 32-bit field), exact over 128 bits. */
static inline unsigned __int128
recover_pn(uint64_t largest, uint32_t seq)
{
    const unsigned __int128 win = (unsigned __int128)1 << 32, hwin = (unsigned __int128)1 << 31;
    const unsigned __int128 top = ((unsigned __int128)1 << 64) - win;
    unsigned __int128 expected = (unsigned __int128)largest + 1;
    unsigned __int128 candidate = (expected & ~(win - 1)) | seq;
    if (expected >= hwin && candidate <= expected - hwin && candidate < top)
        return candidate + win;
    if (candidate > expected + hwin && candidate >= win)
        return candidate - win;
    return candidate;
}

/* ======================================================== replay bitmaps */

/* ReplayWindow._bits as little-endian 64-bit words (window sizes up to this). */
#define MAX_REPLAY_WORDS 256

static int
long_to_words(PyObject *v, uint64_t *w, Py_ssize_t nwords)
{
    if (!PyLong_Check(v)) {
        PyErr_SetString(PyExc_TypeError, "ReplayWindow._bits is not an int");
        return -1;
    }
#if PY_VERSION_HEX >= 0x030D0000
    Py_ssize_t r = PyLong_AsNativeBytes(v, w, nwords * 8,
                                        Py_ASNATIVEBYTES_LITTLE_ENDIAN
                                            | Py_ASNATIVEBYTES_UNSIGNED_BUFFER);
    if (r < 0)
        return -1;
    if (r > nwords * 8) {
        PyErr_SetString(PyExc_OverflowError, "ReplayWindow._bits above its size");
        return -1;
    }
#else
    if (_PyLong_AsByteArray((PyLongObject *)v, (unsigned char *)w, (size_t)nwords * 8, 1, 0) < 0)
        return -1;
#endif
#if PY_BIG_ENDIAN
#error "intentra._native assumes a little-endian machine"
#endif
    return 0;
}

static PyObject *
words_to_long(const uint64_t *w, Py_ssize_t nwords)
{
#if PY_VERSION_HEX >= 0x030D0000
    return PyLong_FromUnsignedNativeBytes(w, nwords * 8, Py_ASNATIVEBYTES_LITTLE_ENDIAN);
#else
    return _PyLong_FromByteArray((const unsigned char *)w, (size_t)nwords * 8, 1, 0);
#endif
}

/* ============================================================== Receiver */

typedef struct {
    Py_ssize_t received, malformed, unknown, rate_limit, crypto, replay, delivered_rt;
} Counts;

/* The words of the last ReplayWindow._bits written, per conn_id slot: an int is
 * immutable, so while ``_bits`` is still that very object (a strong reference is
 * kept, so its address cannot be reused) its words need no conversion. A cache
 * of a value, not state: any other object is converted afresh. */
#define BITS_CACHE 256
#define BITS_CACHE_WORDS 16
typedef struct {
    PyObject *bits;
    uint64_t words[BITS_CACHE_WORDS];
} BitsEntry;

typedef struct {
    PyObject_HEAD
    PyObject *endpoint;
    PyObject *message_received; /* the MessageReceived class (a NamedTuple) */
    Py_ssize_t message_fields;  /* 4, or 5 with ``lane`` (0 for what this path delivers) */
    PyObject *realtime;         /* Intent.REALTIME */
    Slot slots[NSLOTS];
    /* per batch (borrowed from the endpoint for its duration) */
    PyObject *sessions, *failed_opens, *stats, *events_append, *dirty_add, *flush_add;
    PyObject *py_receive, *py_authenticated, *py_failed_open;
    double ack_delay, message_cost, min_interval;
    uint64_t ack_every;
    long catch_up;
    Counts counts;
    BitsEntry *bits_cache;
} ReceiverObject;

static PyObject *str_sessions, *str_failed_opens, *str_stats, *str_events, *str_dirty,
    *str_flush, *str_config, *str_receive, *str_authenticated, *str_failed_open,
    *str_append, *str_add, *str_ack_delay, *str_message_cost, *str_min_interval, *str_ack_every,
    *str_catch_up, *str_ready, *str_expire_previous, *str_mark, *str_is_fresh;

static const char *count_names[] = {
    "packets_received", "packets_dropped_malformed", "packets_dropped_unknown",
    "packets_dropped_rate_limit", "packets_dropped_crypto", "replay_rejections",
    "messages_delivered_realtime",
};

static void batch_release(ReceiverObject *self);
static int batch_setup(ReceiverObject *self);

static int
Receiver_init(ReceiverObject *self, PyObject *args, PyObject *kwds)
{
    PyObject *endpoint, *mr, *rt;
    static char *kwlist[] = {"endpoint", "message_received", "realtime", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO", kwlist, &endpoint, &mr, &rt))
        return -1;
    if (!PyType_Check(mr) || !PyType_IsSubtype((PyTypeObject *)mr, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "message_received must be a tuple subclass");
        return -1;
    }
    /* The fields this file fills: conn_id, data, intent, priority, and lane (always 0
     * here: a message of another lane travels in extended DATA, the Python core's). */
    PyObject *fields = PyObject_GetAttrString(mr, "_fields");
    if (fields == NULL)
        return -1;
    Py_ssize_t nfields = PyObject_Length(fields);
    int known = nfields == 4 || nfields == 5;
    if (known && nfields == 5) {
        PyObject *last = PySequence_GetItem(fields, 4);
        known = last != NULL && PyUnicode_Check(last)
                && PyUnicode_CompareWithASCIIString(last, "lane") == 0;
        Py_XDECREF(last);
    }
    Py_DECREF(fields);
    if (!known) {
        PyErr_SetString(PyExc_TypeError, "the C receive path builds MessageReceived as "
                                         "(conn_id, data, intent, priority[, lane]); "
                                         "update src/intentra/_native.c with the event");
        return -1;
    }
    self->message_fields = nfields;
    Py_INCREF(endpoint);
    Py_XSETREF(self->endpoint, endpoint);
    Py_INCREF(mr);
    Py_XSETREF(self->message_received, mr);
    Py_INCREF(rt);
    Py_XSETREF(self->realtime, rt);
    if (self->bits_cache == NULL) {
        self->bits_cache = PyMem_Calloc(BITS_CACHE, sizeof(BitsEntry));
        if (self->bits_cache == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    for (int i = 0; i < NSLOTS; i++) {
        if (self->slots[i].name == NULL) {
            self->slots[i].cname = slot_names[i];
            self->slots[i].name = PyUnicode_InternFromString(slot_names[i]);
            if (self->slots[i].name == NULL)
                return -1;
        }
    }
    /* The endpoint's containers, bound methods and configuration, taken once: an
     * Endpoint sets them in its __init__ and never replaces them (its config is
     * frozen), and the Receiver is made last there. */
    batch_release(self);
    if (batch_setup(self) < 0) {
        batch_release(self);
        return -1;
    }
    return 0;
}

static int
Receiver_traverse(ReceiverObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->endpoint);
    Py_VISIT(self->message_received);
    Py_VISIT(self->realtime);
    Py_VISIT(self->sessions);
    Py_VISIT(self->failed_opens);
    Py_VISIT(self->stats);
    Py_VISIT(self->events_append);
    Py_VISIT(self->dirty_add);
    Py_VISIT(self->flush_add);
    Py_VISIT(self->py_receive);
    Py_VISIT(self->py_authenticated);
    Py_VISIT(self->py_failed_open);
    return 0;
}

static int
Receiver_clear(ReceiverObject *self)
{
    Py_CLEAR(self->endpoint);
    Py_CLEAR(self->message_received);
    Py_CLEAR(self->realtime);
    batch_release(self);
    return 0;
}

static void
Receiver_dealloc(ReceiverObject *self)
{
    PyObject_GC_UnTrack(self);
    Receiver_clear(self);
    if (self->bits_cache != NULL) {
        for (int i = 0; i < BITS_CACHE; i++)
            Py_XDECREF(self->bits_cache[i].bits);
        PyMem_Free(self->bits_cache);
        self->bits_cache = NULL;
    }
    for (int i = 0; i < NSLOTS; i++) {
        Py_CLEAR(self->slots[i].name);
        if (self->slots[i].type != NULL) {
            Py_DECREF(self->slots[i].type);
            self->slots[i].type = NULL;
        }
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

#define SL(i) (&self->slots[(i)])

static void
batch_release(ReceiverObject *self)
{
    Py_CLEAR(self->sessions);
    Py_CLEAR(self->failed_opens);
    Py_CLEAR(self->stats);
    Py_CLEAR(self->events_append);
    Py_CLEAR(self->dirty_add);
    Py_CLEAR(self->flush_add);
    Py_CLEAR(self->py_receive);
    Py_CLEAR(self->py_authenticated);
    Py_CLEAR(self->py_failed_open);
}

static int
config_double(PyObject *config, PyObject *name, double *out)
{
    PyObject *v = PyObject_GetAttr(config, name);
    if (v == NULL)
        return -1;
    *out = PyFloat_AsDouble(v);
    Py_DECREF(v);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

static int
batch_setup(ReceiverObject *self)
{
    PyObject *ep = self->endpoint, *events = NULL, *dirty = NULL, *flush = NULL, *cfg = NULL;
    int rc = -1;
    if (!(self->sessions = PyObject_GetAttr(ep, str_sessions))
        || !(self->failed_opens = PyObject_GetAttr(ep, str_failed_opens))
        || !(self->stats = PyObject_GetAttr(ep, str_stats))
        || !(events = PyObject_GetAttr(ep, str_events))
        || !(dirty = PyObject_GetAttr(ep, str_dirty))
        || !(flush = PyObject_GetAttr(ep, str_flush))
        || !(self->events_append = PyObject_GetAttr(events, str_append))
        || !(self->dirty_add = PyObject_GetAttr(dirty, str_add))
        || !(self->flush_add = PyObject_GetAttr(flush, str_add))
        || !(self->py_receive = PyObject_GetAttr(ep, str_receive))
        || !(self->py_authenticated = PyObject_GetAttr(ep, str_authenticated))
        || !(self->py_failed_open = PyObject_GetAttr(ep, str_failed_open))
        || !(cfg = PyObject_GetAttr(ep, str_config)))
        goto done;
    if (!PyDict_CheckExact(self->sessions) || !PyDict_Check(self->failed_opens)) {
        PyErr_SetString(PyExc_TypeError, "Endpoint.sessions and _failed_opens must be dicts");
        goto done;
    }
    if (config_double(cfg, str_ack_delay, &self->ack_delay) < 0
        || config_double(cfg, str_message_cost, &self->message_cost) < 0
        || config_double(cfg, str_min_interval, &self->min_interval) < 0)
        goto done;
    PyObject *v = PyObject_GetAttr(cfg, str_ack_every);
    if (v == NULL)
        goto done;
    self->ack_every = PyLong_AsUnsignedLongLong(v);
    Py_DECREF(v);
    if (PyErr_Occurred())
        goto done;
    v = PyObject_GetAttr(cfg, str_catch_up);
    if (v == NULL)
        goto done;
    self->catch_up = PyLong_AsLong(v);
    Py_DECREF(v);
    if (PyErr_Occurred())
        goto done;
    memset(&self->counts, 0, sizeof(self->counts));
    rc = 0;
done:
    Py_XDECREF(events);
    Py_XDECREF(dirty);
    Py_XDECREF(flush);
    Py_XDECREF(cfg);
    return rc;
}

/* Add the batch's counts to the endpoint's Stats (core/stats.py). */
static int
counts_flush(ReceiverObject *self)
{
    Py_ssize_t *c = (Py_ssize_t *)&self->counts;
    int rc = 0;
    PyObject *saved_type, *saved_value, *saved_tb;
    PyErr_Fetch(&saved_type, &saved_value, &saved_tb);
    for (size_t i = 0; i < sizeof(Counts) / sizeof(Py_ssize_t); i++) {
        if (c[i] == 0)
            continue;
        PyObject *old = PyObject_GetAttrString(self->stats, count_names[i]);
        PyObject *delta = PyLong_FromSsize_t(c[i]);
        PyObject *sum = (old && delta) ? PyNumber_Add(old, delta) : NULL;
        if (sum == NULL || PyObject_SetAttrString(self->stats, count_names[i], sum) < 0) {
            rc = -1;
            PyErr_Clear();
        }
        Py_XDECREF(old);
        Py_XDECREF(delta);
        Py_XDECREF(sum);
        c[i] = 0;
    }
    PyErr_Restore(saved_type, saved_value, saved_tb);
    return rc;
}

static inline int
call1(PyObject *f, PyObject *a)
{
    PyObject *r = PyObject_CallOneArg(f, a);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* endpoint._receive(data, addr, now): the Python core takes the datagram from
 * step 1, with nothing of it counted or changed here. */
static int
to_python(ReceiverObject *self, PyObject *data, PyObject *addr, PyObject *now)
{
    PyObject *args[3] = {data, addr, now};
    PyObject *r = PyObject_Vectorcall(self->py_receive, args, 3, NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* TokenBucket.ready(now) on the object's own fields (core/ratelimit.py).
 * 1 ready, 0 not, -1 error. */
static int
bucket_ready(ReceiverObject *self, PyObject *bucket, PyObject *now_obj, double now)
{
    double tokens, updated_at, rate, burst;
    if (slot_double(SL(B_TOKENS), bucket, &tokens) < 0
        || slot_double(SL(B_UPDATED_AT), bucket, &updated_at) < 0)
        return -1;
    double elapsed = now - updated_at;
    if (elapsed > 0) {
        if (slot_double(SL(B_RATE), bucket, &rate) < 0
            || slot_double(SL(B_BURST), bucket, &burst) < 0)
            return -1;
        double t = tokens + elapsed * rate;
        /* min(tokens + elapsed * rate, burst): the first unless burst is smaller */
        if (burst < t) {
            PyObject *b = slot_get(SL(B_BURST), bucket);
            if (b == NULL || slot_set_new(SL(B_TOKENS), bucket, b) < 0)
                return -1;
            tokens = burst;
        } else {
            if (slot_set_new(SL(B_TOKENS), bucket, PyFloat_FromDouble(t)) < 0)
                return -1;
            tokens = t;
        }
        if (slot_set(SL(B_UPDATED_AT), bucket, now_obj) < 0)
            return -1;
    }
    return tokens >= 1.0;
}

/* bucket.tokens -= amount */
static int
bucket_charge(ReceiverObject *self, PyObject *bucket, double amount)
{
    PyObject *v = slot_get(SL(B_TOKENS), bucket);
    if (v == NULL)
        return -1;
    PyObject *a = PyFloat_FromDouble(amount);
    PyObject *r = a ? PyNumber_Subtract(v, a) : NULL;
    Py_DECREF(v);
    Py_XDECREF(a);
    return slot_set_new(SL(B_TOKENS), bucket, r);
}

/* The REALTIME framing of docs/protocol.md section 5 (len (2) | message ...):
 * the number of messages, or 0 when the packet is a violation. */
static Py_ssize_t
count_realtime(const unsigned char *p, Py_ssize_t n)
{
    Py_ssize_t off = 0, count = 0;
    while (off < n) {
        if (off + 2 > n)
            return 0;
        Py_ssize_t len = ((Py_ssize_t)p[off] << 8) | p[off + 1];
        off += 2;
        if (len == 0 || off + len > n)
            return 0;
        off += len;
        count++;
    }
    return count;
}

enum { P_DONE = 0, P_PYTHON = 1, P_ERROR = -1 };

/* Steps 7 and 8 for a REALTIME DATA packet that moved no key, from the
 * session's own validated address, of a confirmed session, with well-formed
 * framing and an `ack` that acknowledges nothing new: exactly what
 * Endpoint._authenticated and Session.on_packet / _on_data do for it. */
static int
fast_realtime(ReceiverObject *self, PyObject *session, PyObject *conn_id, const Header *h,
              uint64_t pn, const unsigned char *pt, Py_ssize_t ptlen, Py_ssize_t count,
              PyObject *bucket, PyObject *now_obj, double now)
{
    int r;
    /* Read first: nothing may change before the packet is known to stay here. */
    uint64_t largest, bits, last_ack_largest;
    if ((r = slot_u64(SL(S_RX_LARGEST), session, &largest)) != 0
        || (r = slot_u64(SL(S_RX_BITS), session, &bits)) != 0
        || (r = slot_u64(SL(S_LAST_ACK_LARGEST), session, &last_ack_largest)) != 0)
        return r < 0 ? P_ERROR : P_PYTHON; /* unreachable for a session in step */
    /* 7. (no new address, no path budget) the idle timer restarts */
    if (slot_set(SL(S_LAST_RECV_AT), session, now_obj) < 0)
        return P_ERROR;
    /* 8. */
    if ((r = slot_is_none(SL(S_ACK_AT), session)) < 0)
        return P_ERROR;
    int had_ack_at = !r, started_ack_at = 0;
    /* the pn for our ACKs (largest_pn, pn_bitmap) */
    if (pn > largest) {
        uint64_t shift = pn - largest;
        if (largest == 0 || shift > 64)
            bits = 0;
        else if (shift == 64)
            bits = (uint64_t)1 << 63;
        else
            bits = (bits << shift) | ((uint64_t)1 << (shift - 1));
        if (slot_set_new(SL(S_RX_BITS), session, PyLong_FromUnsignedLongLong(bits)) < 0
            || slot_set_new(SL(S_RX_LARGEST), session, PyLong_FromUnsignedLongLong(pn)) < 0
            || slot_set(SL(S_RX_LARGEST_AT), session, now_obj) < 0)
            return P_ERROR;
    } else if (pn && pn < largest && largest - 1 - pn < 64) {
        bits |= (uint64_t)1 << (largest - 1 - pn);
        if (slot_set_new(SL(S_RX_BITS), session, PyLong_FromUnsignedLongLong(bits)) < 0)
            return P_ERROR;
    }
    if ((unsigned __int128)pn >= (unsigned __int128)last_ack_largest + self->ack_every) {
        if (slot_set(SL(S_ACK_NOW), session, Py_True) < 0)
            return P_ERROR;
    } else if (h->eliciting && !had_ack_at) {
        if (slot_set_new(SL(S_ACK_AT), session,
                         PyFloat_FromDouble(now + self->ack_delay)) < 0)
            return P_ERROR;
        started_ack_at = 1;
    }
    /* deliver, one event per message, in order */
    PyObject *priority = PyLong_FromLong(h->priority);
    if (priority == NULL)
        return P_ERROR;
    PyTypeObject *mr = (PyTypeObject *)self->message_received;
    Py_ssize_t off = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t len = ((Py_ssize_t)pt[off] << 8) | pt[off + 1];
        off += 2;
        PyObject *data = PyBytes_FromStringAndSize((const char *)pt + off, len);
        off += len;
        PyObject *ev = data ? mr->tp_alloc(mr, self->message_fields) : NULL;
        if (ev == NULL) {
            Py_XDECREF(data);
            Py_DECREF(priority);
            return P_ERROR;
        }
        Py_INCREF(conn_id);
        PyTuple_SET_ITEM(ev, 0, conn_id);
        PyTuple_SET_ITEM(ev, 1, data);
        Py_INCREF(self->realtime);
        PyTuple_SET_ITEM(ev, 2, self->realtime);
        Py_INCREF(priority);
        PyTuple_SET_ITEM(ev, 3, priority);
        if (self->message_fields == 5)
            PyTuple_SET_ITEM(ev, 4, PyLong_FromLong(0)); /* lane 0: a cached small int */
        int rc = call1(self->events_append, ev);
        Py_DECREF(ev);
        if (rc < 0) {
            Py_DECREF(priority);
            return P_ERROR;
        }
    }
    Py_DECREF(priority);
    self->counts.delivered_rt += count;
    (void)ptlen;
    /* each message past the first costs message_cost tokens, as debt */
    if (count > 1 && bucket_charge(self, bucket, (double)(count - 1) * self->message_cost) < 0)
        return P_ERROR;
    /* re-arm only if a deadline may have moved earlier (Endpoint._authenticated) */
    int dirty;
    if ((r = slot_is_none(SL(S_TIMER_AT), session)) < 0)
        return P_ERROR;
    dirty = r || started_ack_at;
    if (!dirty) {
        PyObject *recovery = slot_get(SL(S_RECOVERY), session);
        if (recovery == NULL)
            return P_ERROR;
        r = slot_true(SL(V_IN_FLIGHT), recovery);
        Py_DECREF(recovery);
        if (r < 0)
            return P_ERROR;
        dirty = r;
    }
    if (dirty && call1(self->dirty_add, session) < 0)
        return P_ERROR;
    int flush;
    if ((flush = slot_true(SL(S_ACK_NOW), session)) < 0)
        return P_ERROR;
    if (!flush && (flush = slot_true(SL(S_RETRANSMIT), session)) < 0)
        return P_ERROR;
    if (!flush && (flush = slot_true(SL(S_QUEUED), session)) < 0)
        return P_ERROR;
    if (flush && call1(self->flush_add, session) < 0)
        return P_ERROR;
    return P_DONE;
}

/* Whether the fast path of steps 7-8 applies (see fast_realtime). 1, 0, -1. */
static int
fast_eligible(ReceiverObject *self, PyObject *session, int home, const Header *h)
{
    int r;
    if (!home)
        return 0;
    if ((r = slot_is_none(SL(S_PATH_BUDGET), session)) <= 0)
        return r;
    PyObject *c = slot_get(SL(S_CONFIRMED), session);
    if (c == NULL)
        return -1;
    r = c == Py_True;
    Py_DECREF(c);
    if (!r)
        return 0;
    PyObject *window = slot_get(SL(S_SEND_WINDOW), session);
    if (window == NULL)
        return -1;
    uint64_t acked;
    r = slot_u64(SL(W_ACKED), window, &acked);
    Py_DECREF(window);
    if (r < 0)
        return -1;
    return r == 0 && acked == h->ack;
}

/* replay._bits as words (cached, see BitsEntry). 0, or -1 with an exception. */
static int
load_bits(ReceiverObject *self, uint32_t conn_id, PyObject *replay, uint64_t *words,
          Py_ssize_t nwords)
{
    PyObject *b = slot_get(SL(R_BITS), replay);
    if (b == NULL)
        return -1;
    if (nwords <= BITS_CACHE_WORDS) {
        BitsEntry *e = &self->bits_cache[conn_id % BITS_CACHE];
        if (e->bits == b) {
            memcpy(words, e->words, (size_t)nwords * 8);
            Py_DECREF(b);
            return 0;
        }
    }
    memset(words, 0, (size_t)nwords * 8);
    int r = long_to_words(b, words, nwords);
    Py_DECREF(b);
    return r;
}

/* replay._bits := nb (stolen), remembering its words. */
static int
store_bits(ReceiverObject *self, uint32_t conn_id, PyObject *replay, PyObject *nb,
           const uint64_t *words, Py_ssize_t nwords)
{
    if (nb == NULL)
        return -1;
    if (nwords <= BITS_CACHE_WORDS) {
        BitsEntry *e = &self->bits_cache[conn_id % BITS_CACHE];
        Py_INCREF(nb);
        Py_XSETREF(e->bits, nb);
        memcpy(e->words, words, (size_t)nwords * 8);
    }
    return slot_set_new(SL(R_BITS), replay, nb);
}

/* One datagram of DATA, ACK or CLOSE whose header passed; steps 2-8. */
static int
receive_sealed(ReceiverObject *self, PyObject *data, PyObject *addr, PyObject *now_obj,
               double now, const Header *h)
{
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    PyObject *conn_id = NULL, *session, *keys = NULL, *bucket = NULL, *replay = NULL;
    PyObject *aead = NULL, *session_addr = NULL, *fails = NULL, *plain = NULL;
    int rc = P_ERROR, r;
    unsigned char plaintext[MAX_PACKET_SIZE];
    uint64_t words[MAX_REPLAY_WORDS];

    /* 2. session lookup; it must have receive keys */
    conn_id = PyLong_FromUnsignedLong(h->conn_id);
    if (conn_id == NULL)
        return P_ERROR;
    session = PyDict_GetItemWithError(self->sessions, conn_id); /* borrowed */
    if (session == NULL) {
        if (PyErr_Occurred())
            goto done;
        self->counts.received++;
        self->counts.unknown++;
        rc = P_DONE;
        goto done;
    }
    Py_INCREF(session);
    if (!(keys = slot_get(SL(S_RECV_KEYS), session)))
        goto done_s;
    if (keys == Py_None) {
        self->counts.received++;
        self->counts.unknown++;
        rc = P_DONE;
        goto done_s;
    }
    /* 3. rate limits before any cryptography: the session's bucket must hold a
     * token (charged only once the packet authenticates), and the failed-open
     * allowance of this kind of source, if opens have failed before. */
    if (!(bucket = slot_get(SL(S_BUCKET), session))
        || !(session_addr = slot_get(SL(S_ADDR), session)))
        goto done_s;
    int home = PyObject_RichCompareBool(addr, session_addr, Py_EQ);
    if (home < 0)
        goto done_s;
    fails = PyDict_GetItemWithError(self->failed_opens, conn_id);
    if (fails == NULL && PyErr_Occurred())
        goto done_s;
    Py_XINCREF(fails);
    if ((r = bucket_ready(self, bucket, now_obj, now)) < 0)
        goto done_s;
    if (r && fails != NULL) {
        PyObject *allowance = PySequence_GetItem(fails, !home);
        PyObject *res = allowance ? PyObject_CallMethodOneArg(allowance, str_ready, now_obj) : NULL;
        Py_XDECREF(allowance);
        if (res == NULL)
            goto done_s;
        r = PyObject_IsTrue(res);
        Py_DECREF(res);
        if (r < 0)
            goto done_s;
    }
    if (!r) {
        self->counts.received++;
        self->counts.rate_limit++;
        rc = P_DONE;
        goto done_s;
    }
    /* 4. packet number recovery and replay pre-check */
    if (!(replay = slot_get(SL(S_REPLAY), session)))
        goto done_s;
    uint64_t highest;
    if ((r = slot_u64(SL(R_HIGHEST), replay, &highest)) != 0) {
        rc = r < 0 ? P_ERROR : to_python(self, data, addr, now_obj);
        goto done_s;
    }
    unsigned __int128 pn128 = recover_pn(highest, h->seq);
    if (pn128 >> 64) {
        rc = to_python(self, data, addr, now_obj); /* beyond 64 bits: the reference decides */
        goto done_s;
    }
    uint64_t pn = (uint64_t)pn128;
    uint64_t size;
    if ((r = slot_u64(SL(R_SIZE), replay, &size)) != 0 || size == 0
        || (size + 63) / 64 > MAX_REPLAY_WORDS) {
        rc = r < 0 ? P_ERROR : to_python(self, data, addr, now_obj);
        goto done_s;
    }
    Py_ssize_t nwords = (Py_ssize_t)((size + 63) / 64);
    int words_loaded = 0;
    if (pn <= highest) {
        uint64_t diff = highest - pn;
        int fresh = 0;
        if (diff < size) {
            if (load_bits(self, h->conn_id, replay, words, nwords) < 0)
                goto done_s;
            words_loaded = 1;
            fresh = !((words[diff / 64] >> (diff % 64)) & 1);
        }
        if (!fresh) {
            self->counts.received++;
            self->counts.replay++;
            rc = P_DONE;
            goto done_s;
        }
    }
    /* 5. AEAD open with the key the header's phase chooses; on failure nothing
     * in the session changes. An expired previous key is erased first. */
    {
        PyObject *exp = slot_get(SL(K_PREV_EXPIRES_AT), keys);
        if (exp == NULL)
            goto done_s;
        if (exp != Py_None) {
            double at = PyFloat_AsDouble(exp);
            Py_DECREF(exp);
            if (at == -1.0 && PyErr_Occurred())
                goto done_s;
            if (now >= at) {
                PyObject *res = PyObject_CallMethodOneArg(keys, str_expire_previous, now_obj);
                if (res == NULL)
                    goto done_s;
                Py_DECREF(res);
            }
        } else {
            Py_DECREF(exp);
        }
    }
    double last_recv_at;
    if (slot_double(SL(S_LAST_RECV_AT), session, &last_recv_at) < 0)
        goto done_s;
    long catch_up = now - last_recv_at >= self->min_interval ? self->catch_up : 0;
    uint64_t phase;
    if ((r = slot_u64(SL(K_PHASE), keys, &phase)) != 0) {
        rc = r < 0 ? P_ERROR : to_python(self, data, addr, now_obj);
        goto done_s;
    }
    int steps = 0, is_prev = 0;
    if ((uint64_t)h->key_phase == phase) {
        aead = slot_get(SL(K_CUR), keys);
    } else {
        PyObject *prev = slot_get(SL(K_PREV), keys);
        if (prev == NULL)
            goto done_s;
        uint64_t first_pn = 0;
        int use_prev = 0;
        if (prev != Py_None) {
            if ((r = slot_u64(SL(K_FIRST_PN), keys, &first_pn)) < 0) {
                Py_DECREF(prev);
                goto done_s;
            }
            use_prev = r == 0 && pn < first_pn;
        }
        if (use_prev) {
            aead = prev;
            is_prev = 1;
        } else {
            Py_DECREF(prev);
            aead = slot_get(SL(K_NEXT), keys);
            if (aead == Py_None) {
                /* the next key's AEAD is made when first needed, as ReceiveKeys.open
                 * does, by the keys' own factory */
                Py_DECREF(aead);
                PyObject *next_key = slot_get(SL(K_NEXT_KEY), keys);
                PyObject *factory = next_key ? slot_get(SL(K_FACTORY), keys) : NULL;
                aead = factory ? PyObject_CallOneArg(factory, next_key) : NULL;
                Py_XDECREF(next_key);
                Py_XDECREF(factory);
                if (aead == NULL || slot_set(SL(K_NEXT), keys, aead) < 0)
                    goto done_s;
            }
            steps = 1;
        }
    }
    if (aead == NULL)
        goto done_s;
    if (Py_TYPE(aead) != &AeadType) {
        rc = to_python(self, data, addr, now_obj); /* keys of another AEAD: the reference opens */
        goto done_s;
    }
    unsigned char nonce[NONCE_LEN];
    put_be32(nonce, h->conn_id);
    put_be32(nonce + 4, (uint32_t)(pn >> 32));
    put_be32(nonce + 8, (uint32_t)pn);
    int ok = aead_open((AeadObject *)aead, nonce, d, HEADER_LEN, d + HEADER_LEN,
                       (int)(n - HEADER_LEN), plaintext);
    if (ok < 0) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL AES-256-GCM open failed");
        goto done_s;
    }
    if (!ok) {
        if (catch_up > 0 && !is_prev) {
            /* keys further ahead: the reference tries them (ReceiveKeys.open) */
            rc = to_python(self, data, addr, now_obj);
            goto done_s;
        }
        PyObject *args[3] = {conn_id, home ? Py_True : Py_False, now_obj};
        PyObject *res = PyObject_Vectorcall(self->py_failed_open, args, 3, NULL);
        if (res == NULL)
            goto done_s;
        Py_DECREF(res);
        self->counts.received++;
        self->counts.crypto++;
        rc = P_DONE;
        goto done_s;
    }
    self->counts.received++;
    /* step 3's token, now that the packet authenticated */
    if (bucket_charge(self, bucket, 1.0) < 0)
        goto done_s;
    /* 6. commit the replay window (ReplayWindow.mark) */
    int newest = pn > highest;
    {
        PyObject *nb;
        if (newest) {
            uint64_t shift = pn - highest;
            if (shift < size) {
                if (!words_loaded && load_bits(self, h->conn_id, replay, words, nwords) < 0)
                    goto done_s;
                /* words <<= shift, | 1, & mask(size) */
                uint64_t ws = shift / 64, bs = shift % 64;
                for (Py_ssize_t i = nwords - 1; i >= 0; i--) {
                    uint64_t hi = (Py_ssize_t)(i - ws) >= 0 ? words[i - ws] : 0;
                    uint64_t lo = (bs && (Py_ssize_t)(i - ws - 1) >= 0) ? words[i - ws - 1] : 0;
                    words[i] = bs ? (hi << bs) | (lo >> (64 - bs)) : hi;
                }
                words[0] |= 1;
                if (size % 64)
                    words[nwords - 1] &= ((uint64_t)1 << (size % 64)) - 1;
                nb = words_to_long(words, nwords);
            } else {
                memset(words, 0, (size_t)nwords * 8);
                words[0] = 1;
                nb = PyLong_FromLong(1);
            }
            if (store_bits(self, h->conn_id, replay, nb, words, nwords) < 0
                || slot_set_new(SL(R_HIGHEST), replay, PyLong_FromUnsignedLongLong(pn)) < 0)
                goto done_s;
        } else {
            uint64_t diff = highest - pn; /* < size: it was fresh */
            words[diff / 64] |= (uint64_t)1 << (diff % 64);
            if (store_bits(self, h->conn_id, replay, words_to_long(words, nwords), words,
                           nwords) < 0)
                goto done_s;
        }
    }
    Py_ssize_t ptlen = n - HEADER_LEN - TAG_LEN;
    /* 7-8: the common REALTIME DATA here, everything else in the Python core */
    if (h->ptype == T_DATA && h->intent == REALTIME && steps == 0) {
        Py_ssize_t count = count_realtime(plaintext, ptlen);
        if (count > 0) {
            r = fast_eligible(self, session, home, h);
            if (r < 0)
                goto done_s;
            if (r) {
                rc = fast_realtime(self, session, conn_id, h, pn, plaintext, ptlen, count,
                                   bucket, now_obj, now);
                if (rc != P_PYTHON)
                    goto done_s;
            }
        }
    }
    plain = PyBytes_FromStringAndSize((const char *)plaintext, ptlen);
    if (plain == NULL)
        goto done_s;
    {
        PyObject *ptype = PyLong_FromLong(h->ptype), *intent = PyLong_FromLong(h->intent);
        PyObject *prio = PyLong_FromLong(h->priority), *ack = PyLong_FromUnsignedLong(h->ack);
        PyObject *elic = PyLong_FromLong(h->eliciting), *pn_obj = PyLong_FromUnsignedLongLong(pn);
        PyObject *steps_obj = PyLong_FromLong(steps), *size_obj = PyLong_FromSsize_t(n);
        if (ptype && intent && prio && ack && elic && pn_obj && steps_obj && size_obj) {
            PyObject *args[13] = {session, ptype, intent, prio, ack, elic, pn_obj, plain,
                                  steps_obj, newest ? Py_True : Py_False, addr, size_obj,
                                  now_obj};
            PyObject *res = PyObject_Vectorcall(self->py_authenticated, args, 13, NULL);
            if (res != NULL) {
                Py_DECREF(res);
                rc = P_DONE;
            }
        }
        Py_XDECREF(ptype);
        Py_XDECREF(intent);
        Py_XDECREF(prio);
        Py_XDECREF(ack);
        Py_XDECREF(elic);
        Py_XDECREF(pn_obj);
        Py_XDECREF(steps_obj);
        Py_XDECREF(size_obj);
    }
done_s:
    Py_DECREF(session);
done:
    Py_XDECREF(conn_id);
    Py_XDECREF(keys);
    Py_XDECREF(bucket);
    Py_XDECREF(replay);
    Py_XDECREF(aead);
    Py_XDECREF(session_addr);
    Py_XDECREF(fails);
    Py_XDECREF(plain);
    return rc;
}

static PyObject *
Receiver_receive(ReceiverObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "receive(batch, now)");
        return NULL;
    }
    PyObject *batch = args[0], *now_obj = args[1];
    double now = PyFloat_AsDouble(now_obj);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    PyObject *seq = PySequence_Fast(batch, "batch must be a sequence of (data, address)");
    if (seq == NULL)
        return NULL;
    if (self->endpoint == NULL || self->sessions == NULL) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_RuntimeError, "Receiver not initialised");
        return NULL;
    }
    /* A callback that receives again (none does today) counts its own batch:
     * the outer one's counts wait aside. */
    Counts outer = self->counts;
    memset(&self->counts, 0, sizeof(self->counts));
    /* held for the batch: a callback cannot free what the loop is using */
    Py_INCREF(self);
    int rc = 0;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < count && rc == 0; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        PyObject *data, *addr;
        if (PyTuple_CheckExact(item) && PyTuple_GET_SIZE(item) == 2) {
            data = PyTuple_GET_ITEM(item, 0);
            addr = PyTuple_GET_ITEM(item, 1);
        } else {
            PyObject *pair = PySequence_Tuple(item);
            if (pair == NULL) {
                rc = -1;
                break;
            }
            if (PyTuple_GET_SIZE(pair) != 2) {
                Py_DECREF(pair);
                PyErr_SetString(PyExc_ValueError, "batch items are (data, address)");
                rc = -1;
                break;
            }
            rc = to_python(self, PyTuple_GET_ITEM(pair, 0), PyTuple_GET_ITEM(pair, 1), now_obj);
            Py_DECREF(pair);
            continue;
        }
        if (!PyBytes_CheckExact(data)) {
            rc = to_python(self, data, addr, now_obj); /* memoryview and the like */
            continue;
        }
        Header h;
        /* 1. header checks (section 3) */
        int hr = parse_header((const unsigned char *)PyBytes_AS_STRING(data),
                              PyBytes_GET_SIZE(data), &h);
        if (hr == H_MALFORMED) {
            self->counts.received++;
            self->counts.malformed++;
            continue;
        }
        if (hr == H_PYTHON) {
            rc = to_python(self, data, addr, now_obj);
            continue;
        }
        Py_INCREF(data);
        Py_INCREF(addr);
        rc = receive_sealed(self, data, addr, now_obj, now, &h) == P_ERROR ? -1 : 0;
        Py_DECREF(data);
        Py_DECREF(addr);
    }
    counts_flush(self);
    self->counts = outer;
    Py_DECREF(self);
    Py_DECREF(seq);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef Receiver_methods[] = {
    {"receive", (PyCFunction)(void (*)(void))Receiver_receive, METH_FASTCALL,
     "receive(batch, now): docs/protocol.md section 6 over a batch of (data, address)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ReceiverType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "intentra._native.Receiver",
    .tp_basicsize = sizeof(ReceiverObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The receive order of one Endpoint in C, on the endpoint's own state.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Receiver_init,
    .tp_dealloc = (destructor)Receiver_dealloc,
    .tp_traverse = (traverseproc)Receiver_traverse,
    .tp_clear = (inquiry)Receiver_clear,
    .tp_methods = Receiver_methods,
};

/* ================================================================ Reader */

#define READ_SLOTS 64
#define READ_SLOTS_GRO 8

typedef struct {
    PyObject_HEAD
    int fd;
    int gro;
    int nslots;
    size_t bufsize;
    unsigned char *buffers;
    struct mmsghdr msgs[READ_SLOTS];
    struct iovec iov[READ_SLOTS];
    struct sockaddr_storage names[READ_SLOTS];
    char control[READ_SLOTS][CMSG_SPACE(sizeof(int))];
    PyObject *addresses; /* raw sockaddr bytes -> address tuple */
    Py_ssize_t calls, coalesced;
} ReaderObject;

static int
Reader_init(ReaderObject *self, PyObject *args, PyObject *kwds)
{
    int fd, gro;
    static char *kwlist[] = {"fd", "gro", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "ip", kwlist, &fd, &gro))
        return -1;
    self->fd = fd;
    self->gro = gro;
    self->nslots = gro ? READ_SLOTS_GRO : READ_SLOTS;
    self->bufsize = gro ? GRO_BUFFER : RECEIVE_CAP;
    PyMem_Free(self->buffers);
    self->buffers = PyMem_Malloc(self->bufsize * (size_t)self->nslots);
    if (self->buffers == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_XSETREF(self->addresses, PyDict_New());
    if (self->addresses == NULL)
        return -1;
    return 0;
}

static void
Reader_dealloc(ReaderObject *self)
{
    PyMem_Free(self->buffers);
    Py_XDECREF(self->addresses);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The tuple CPython's socket module makes for this address (inet_ntop, as
 * socketmodule.c does), cached by the raw sockaddr. */
static PyObject *
reader_address(ReaderObject *self, struct sockaddr_storage *ss, socklen_t len)
{
    PyObject *key = PyBytes_FromStringAndSize((const char *)ss, len);
    if (key == NULL)
        return NULL;
    PyObject *addr = PyDict_GetItemWithError(self->addresses, key);
    if (addr != NULL) {
        Py_INCREF(addr);
        Py_DECREF(key);
        return addr;
    }
    if (PyErr_Occurred()) {
        Py_DECREF(key);
        return NULL;
    }
    char text[INET6_ADDRSTRLEN];
    if (ss->ss_family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &a->sin_addr, text, sizeof(text));
        addr = Py_BuildValue("(si)", text, ntohs(a->sin_port));
    } else if (ss->ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, text, sizeof(text));
        addr = Py_BuildValue("(siII)", text, ntohs(a->sin6_port), ntohl(a->sin6_flowinfo),
                             a->sin6_scope_id);
    } else {
        addr = Py_BuildValue("(si)", "", 0);
    }
    if (addr != NULL) {
        if (PyDict_GET_SIZE(self->addresses) >= 65536)
            PyDict_Clear(self->addresses); /* bounded: a flood of sources costs a refill */
        if (PyDict_SetItem(self->addresses, key, addr) < 0)
            Py_CLEAR(addr);
    }
    Py_DECREF(key);
    return addr;
}

static int
reader_append(PyObject *list, const unsigned char *p, Py_ssize_t len, PyObject *addr)
{
    PyObject *data = PyBytes_FromStringAndSize((const char *)p, len);
    if (data == NULL)
        return -1;
    PyObject *pair = PyTuple_Pack(2, data, addr);
    Py_DECREF(data);
    if (pair == NULL)
        return -1;
    int r = PyList_Append(list, pair);
    Py_DECREF(pair);
    return r;
}

/* read(limit) -> list of (bytes, address): what Datapath.receive returns, with
 * recvmmsg, GRO buffers cut into their segments (each at most RECEIVE_CAP). */
static PyObject *
Reader_read(ReaderObject *self, PyObject *arg)
{
    Py_ssize_t limit = PyLong_AsSsize_t(arg);
    if (limit == -1 && PyErr_Occurred())
        return NULL;
    PyObject *list = PyList_New(0);
    if (list == NULL)
        return NULL;
    /* At most ``limit`` calls, as the Python datapath: a socket that keeps failing
     * (an error queued, or closed under us) cannot hold the loop. */
    for (Py_ssize_t call = 0; call < limit && PyList_GET_SIZE(list) < limit; call++) {
        int want = self->nslots;
        if (!self->gro && limit - PyList_GET_SIZE(list) < want)
            want = (int)(limit - PyList_GET_SIZE(list));
        for (int i = 0; i < want; i++) {
            self->iov[i].iov_base = self->buffers + (size_t)i * self->bufsize;
            self->iov[i].iov_len = self->bufsize;
            memset(&self->msgs[i], 0, sizeof(self->msgs[i]));
            self->msgs[i].msg_hdr.msg_iov = &self->iov[i];
            self->msgs[i].msg_hdr.msg_iovlen = 1;
            self->msgs[i].msg_hdr.msg_name = &self->names[i];
            self->msgs[i].msg_hdr.msg_namelen = sizeof(self->names[i]);
            if (self->gro) {
                self->msgs[i].msg_hdr.msg_control = self->control[i];
                self->msgs[i].msg_hdr.msg_controllen = sizeof(self->control[i]);
            }
        }
        /* Non-blocking, so the GIL stays held: the buffers are this object's. */
        int got = recvmmsg(self->fd, self->msgs, (unsigned)want, MSG_DONTWAIT, NULL);
        self->calls++;
        if (got < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                break;
            continue; /* e.g. an ICMP error queued on the socket: as Datapath does */
        }
        if (got == 0)
            break;
        for (int i = 0; i < got; i++) {
            struct msghdr *mh = &self->msgs[i].msg_hdr;
            Py_ssize_t size = self->msgs[i].msg_len;
            const unsigned char *p = self->iov[i].iov_base;
            PyObject *addr = reader_address(self, &self->names[i], mh->msg_namelen);
            if (addr == NULL)
                goto fail;
            int segment = 0;
            if (self->gro) {
                for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c != NULL; c = CMSG_NXTHDR(mh, c)) {
                    if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO
                        && c->cmsg_len >= CMSG_LEN(sizeof(int)))
                        memcpy(&segment, CMSG_DATA(c), sizeof(int));
                }
            }
            int rc = 0;
            if (segment > 0 && segment < size) {
                self->coalesced++;
                for (Py_ssize_t off = 0; off < size && rc == 0; off += segment) {
                    Py_ssize_t len = size - off < segment ? size - off : segment;
                    rc = reader_append(list, p + off, len < RECEIVE_CAP ? len : RECEIVE_CAP,
                                       addr);
                }
            } else {
                rc = reader_append(list, p, size < RECEIVE_CAP ? size : RECEIVE_CAP, addr);
            }
            Py_DECREF(addr);
            if (rc < 0)
                goto fail;
        }
        if (got < want)
            break; /* the socket is drained */
    }
    return list;
fail:
    Py_DECREF(list);
    return NULL;
}

static PyObject *
Reader_get_calls(ReaderObject *self, void *closure)
{
    return PyLong_FromSsize_t(self->calls);
}

static PyObject *
Reader_get_coalesced(ReaderObject *self, void *closure)
{
    return PyLong_FromSsize_t(self->coalesced);
}

static PyGetSetDef Reader_getset[] = {
    {"calls", (getter)Reader_get_calls, NULL, "recvmmsg calls made", NULL},
    {"coalesced", (getter)Reader_get_coalesced, NULL, "GRO buffers that held several", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Reader_methods[] = {
    {"read", (PyCFunction)Reader_read, METH_O,
     "read(limit) -> [(bytes, address)]: drain the socket with recvmmsg"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "intentra._native.Reader",
    .tp_basicsize = sizeof(ReaderObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "recvmmsg on one non-blocking UDP socket, GRO buffers split.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Reader_init,
    .tp_dealloc = (destructor)Reader_dealloc,
    .tp_methods = Reader_methods,
    .tp_getset = Reader_getset,
};

/* ================================================================ module */

static PyObject *
native_aead_opens(PyObject *module, PyObject *unused)
{
    return PyLong_FromUnsignedLongLong(aead_opens_total);
}

static PyMethodDef module_methods[] = {
    {"aead_opens", native_aead_opens, METH_NOARGS,
     "AES-GCM opens tried so far in this process (for tests of what forgeries cost)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "intentra._native",
    "intentra's per-datagram path in C on OpenSSL (docs/native.md).", -1, module_methods,
};

#define INTERN(var, text)                                                                    \
    do {                                                                                     \
        if (!(var = PyUnicode_InternFromString(text)))                                       \
            return NULL;                                                                     \
    } while (0)

PyMODINIT_FUNC
PyInit__native(void)
{
    INTERN(str_sessions, "sessions");
    INTERN(str_failed_opens, "_failed_opens");
    INTERN(str_stats, "stats");
    INTERN(str_events, "_events");
    INTERN(str_dirty, "_dirty");
    INTERN(str_flush, "_flush");
    INTERN(str_config, "config");
    INTERN(str_receive, "_receive");
    INTERN(str_authenticated, "_authenticated");
    INTERN(str_failed_open, "_failed_open");
    INTERN(str_append, "append");
    INTERN(str_add, "add");
    INTERN(str_ack_delay, "ack_delay");
    INTERN(str_message_cost, "message_cost");
    INTERN(str_min_interval, "key_update_min_interval");
    INTERN(str_ack_every, "ack_every");
    INTERN(str_catch_up, "key_update_catch_up");
    INTERN(str_ready, "ready");
    INTERN(str_expire_previous, "expire_previous");
    INTERN(str_mark, "mark");
    INTERN(str_is_fresh, "is_fresh");
    INTERN(str_popleft, "popleft");
    INTERN(str_assign, "assign");

    PyObject *exceptions = PyImport_ImportModule("cryptography.exceptions");
    if (exceptions == NULL)
        return NULL;
    InvalidTag = PyObject_GetAttrString(exceptions, "InvalidTag");
    Py_DECREF(exceptions);
    if (InvalidTag == NULL)
        return NULL;
    if (PyType_Ready(&AeadType) < 0 || PyType_Ready(&ReceiverType) < 0
        || PyType_Ready(&ReaderType) < 0 || PyType_Ready(&PackerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&native_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&AeadType);
    Py_INCREF(&ReceiverType);
    Py_INCREF(&ReaderType);
    Py_INCREF(&PackerType);
    if (PyModule_AddObject(m, "AESGCM", (PyObject *)&AeadType) < 0
        || PyModule_AddObject(m, "Receiver", (PyObject *)&ReceiverType) < 0
        || PyModule_AddObject(m, "Reader", (PyObject *)&ReaderType) < 0
        || PyModule_AddObject(m, "Packer", (PyObject *)&PackerType) < 0
        || PyModule_AddStringConstant(m, "OPENSSL_VERSION",
                                      OpenSSL_version(OPENSSL_VERSION)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
