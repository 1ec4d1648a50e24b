/* Batched UDP I/O with the common queries answered in C: dnsd.transports._batch.
 *
 * The same DatagramBatch as dnsd/transports/mmsg.py (recvmmsg/sendmmsg, replies from the
 * address a query arrived at), plus answer(): for every datagram of the batch that is a plain
 * query (the fast path of dnsd.wire.respond) for a name that is a node, a recently rendered pod
 * or endpoint name, or a name that cannot exist (NXDOMAIN, REFUSED), it builds the response from
 * the index's prebuilt wire answers straight into the send buffer and counts it in the
 * QueryStats arrays. What it does not take -- malformed or unusual input, names still to be
 * rendered, ANY, truncation -- it returns to the caller, which answers those through dnsd.wire.
 * Those Python answers are the reference: tests/test_batch.py checks that both give the same
 * response to generated queries over generated zones.
 *
 * Why C: a query cost 5.2 us of CPU in the Python loop against NSD's 1.4 us, and the system
 * calls were already batched; what was left was the interpreter's per-query work (bench/README.md).
 * The index stays Python data: this reads Node and Answer objects through their attributes.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>

#define CONTROL_SIZE 64
#define QR 0x80
#define AA 0x04
#define RD 0x01
#define CD 0x10
#define RCODE_NXDOMAIN 3
#define RCODE_REFUSED 5
#define TYPE_A 1
#define TYPE_CNAME 5
#define TYPE_AAAA 28
#define TYPE_OPT 41
#define TYPE_IXFR 251
#define TYPE_AXFR 252
#define TYPE_ANY 255
#define UDP_MINIMUM 512
#define UDP_PAYLOAD 1232
#define DURATION_SLOT_NS 250000
#define DURATION_SLOTS 17
#define OPT_SIZE 11

static const unsigned char TSIG_TAIL[8] = {0x00, 0xFA, 0x00, 0xFF, 0x00, 0x00, 0x00, 0x00}; /* type, class, TTL 0 */
static const unsigned char OPT_HEAD[5] = {0x00, 0x00, 0x29, UDP_PAYLOAD >> 8, UDP_PAYLOAD & 0xFF};

/* Attribute names, interned once. */
static PyObject *s_owner, *s_aaaa, *s_a, *s_others, *s_zone, *s_apex_wire, *s_negative_soa, *s_count, *s_window,
    *s_records, *s_size, *s_additional, *s_additional_count, *s_requests, *s_rcodes, *s_durations,
    *s_request_sizes, *s_response_sizes, *s_duration_ns, *s_type_slots, *s_synced, *s_nodes, *s_zones,
    *s_rendered_suffixes, *s_rendered_cache;
static PyObject *s_cname_key; /* the int 5, Node.others' key of a CNAME */

typedef struct {
    PyObject_HEAD
    int fd;
    int pktinfo;
    unsigned int count;
    size_t size;
    unsigned char *recv_data; /* count slots of size bytes each, mmap'ed: pages become resident when used */
    unsigned char *send_data;
    struct sockaddr_storage *names;
    unsigned char *recv_control;
    unsigned char *send_control;
    struct iovec *recv_iov;
    struct iovec *send_iov;
    struct mmsghdr *recv;
    struct mmsghdr *send;
    unsigned int received; /* datagrams of the last receive() */
    unsigned char *queued; /* per slot: a reply waits there for send(); slot i answers datagram i, in order */
    unsigned long long turn;
} Batch;

static void Batch_dealloc(Batch *self) {
    size_t bytes = (size_t)self->count * self->size;
    if (self->recv_data != NULL && self->recv_data != MAP_FAILED) munmap(self->recv_data, bytes);
    if (self->send_data != NULL && self->send_data != MAP_FAILED) munmap(self->send_data, bytes);
    PyMem_Free(self->names);
    PyMem_Free(self->recv_control);
    PyMem_Free(self->send_control);
    PyMem_Free(self->recv_iov);
    PyMem_Free(self->send_iov);
    PyMem_Free(self->recv);
    PyMem_Free(self->send);
    PyMem_Free(self->queued);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static void reset_receive_headers(Batch *self, unsigned int used) {
    /* The kernel overwrites the name and control lengths of the headers it filled. */
    for (unsigned int i = 0; i < used; i++) {
        struct msghdr *header = &self->recv[i].msg_hdr;
        header->msg_namelen = sizeof(struct sockaddr_storage);
        header->msg_control = self->pktinfo ? self->recv_control + (size_t)i * CONTROL_SIZE : NULL;
        header->msg_controllen = self->pktinfo ? CONTROL_SIZE : 0;
        header->msg_flags = 0;
    }
}

static int Batch_init(Batch *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"sock", "count", "size", "pktinfo", NULL};
    PyObject *sock;
    unsigned int count = 64;
    Py_ssize_t size = 65535;
    int pktinfo = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|In$p", keywords, &sock, &count, &size, &pktinfo)) return -1;
    if (self->recv != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "DatagramBatch is already initialised");
        return -1;
    }
    if (count == 0 || count > 1024 || size < 12 || size > 65535) {
        PyErr_SetString(PyExc_ValueError, "count must be 1..1024 and size 12..65535");
        return -1;
    }
    PyObject *fileno = PyObject_CallMethod(sock, "fileno", NULL);
    if (fileno == NULL) return -1;
    self->fd = (int)PyLong_AsLong(fileno);
    Py_DECREF(fileno);
    if (PyErr_Occurred()) return -1;
    self->count = count;
    self->size = (size_t)size;
    self->pktinfo = pktinfo;
    size_t bytes = (size_t)count * self->size;
    self->recv_data = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    self->send_data = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    self->names = PyMem_Calloc(count, sizeof(struct sockaddr_storage));
    self->recv_control = PyMem_Calloc(count, CONTROL_SIZE);
    self->send_control = PyMem_Calloc(count, CONTROL_SIZE);
    self->recv_iov = PyMem_Calloc(count, sizeof(struct iovec));
    self->send_iov = PyMem_Calloc(count, sizeof(struct iovec));
    self->recv = PyMem_Calloc(count, sizeof(struct mmsghdr));
    self->send = PyMem_Calloc(count, sizeof(struct mmsghdr));
    self->queued = PyMem_Calloc(count, 1);
    if (self->recv_data == MAP_FAILED || self->send_data == MAP_FAILED || !self->names || !self->recv_control ||
        !self->send_control || !self->recv_iov || !self->send_iov || !self->recv || !self->send || !self->queued) {
        PyErr_NoMemory();
        return -1;
    }
    for (unsigned int i = 0; i < count; i++) {
        self->recv_iov[i].iov_base = self->recv_data + (size_t)i * self->size;
        self->recv_iov[i].iov_len = self->size;
        self->send_iov[i].iov_base = self->send_data + (size_t)i * self->size;
        self->recv[i].msg_hdr.msg_name = &self->names[i];
        self->recv[i].msg_hdr.msg_iov = &self->recv_iov[i];
        self->recv[i].msg_hdr.msg_iovlen = 1;
    }
    reset_receive_headers(self, count);
    return 0;
}

static PyObject *Batch_receive(Batch *self, PyObject *Py_UNUSED(ignored)) {
    reset_receive_headers(self, self->received);
    self->received = 0;
    memset(self->queued, 0, self->count); /* replies not sent are dropped: their senders' addresses go */
    int received = recvmmsg(self->fd, self->recv, self->count, MSG_DONTWAIT, NULL);
    if (received < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return PyLong_FromLong(0);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    self->received = (unsigned int)received;
    return PyLong_FromLong(received);
}

static int check_index(Batch *self, Py_ssize_t i) {
    if (i < 0 || (size_t)i >= self->received) {
        PyErr_SetString(PyExc_IndexError, "no such datagram in this batch");
        return -1;
    }
    return 0;
}

static PyObject *Batch_datagram(Batch *self, PyObject *arg) {
    Py_ssize_t i = PyLong_AsSsize_t(arg);
    if (i == -1 && PyErr_Occurred()) return NULL;
    if (check_index(self, i) < 0) return NULL;
    if (self->recv[i].msg_hdr.msg_flags & MSG_TRUNC) Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((char *)self->recv_data + (size_t)i * self->size, self->recv[i].msg_len);
}

static const unsigned char V4_MAPPED[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};

/* Whether the i-th sender is a real IPv6 sender (not IPv4, not IPv4-mapped). */
static int sender_is_ipv6(Batch *self, unsigned int i) {
    const struct sockaddr_storage *name = &self->names[i];
    if (name->ss_family != AF_INET6) return 0;
    return memcmp(&((const struct sockaddr_in6 *)name)->sin6_addr, V4_MAPPED, 12) != 0;
}

static unsigned int sender_port(Batch *self, unsigned int i) {
    const struct sockaddr_storage *name = &self->names[i];
    if (name->ss_family == AF_INET6) return ntohs(((const struct sockaddr_in6 *)name)->sin6_port);
    if (name->ss_family == AF_INET) return ntohs(((const struct sockaddr_in *)name)->sin_port);
    return 0;
}

static PyObject *Batch_sender(Batch *self, PyObject *arg) {
    Py_ssize_t i = PyLong_AsSsize_t(arg);
    if (i == -1 && PyErr_Occurred()) return NULL;
    if (check_index(self, i) < 0) return NULL;
    return Py_BuildValue("(IO)", sender_port(self, (unsigned int)i),
                         sender_is_ipv6(self, (unsigned int)i) ? Py_True : Py_False);
}

static PyObject *Batch_peer(Batch *self, PyObject *arg) {
    Py_ssize_t i = PyLong_AsSsize_t(arg);
    if (i == -1 && PyErr_Occurred()) return NULL;
    if (check_index(self, i) < 0) return NULL;
    return PyBytes_FromStringAndSize((char *)&self->names[i], self->recv[i].msg_hdr.msg_namelen);
}

/* Control data that sends the reply to datagram i from the address it arrived at; its length. */
static size_t reply_control(Batch *self, unsigned int i) {
    struct msghdr *received = &self->recv[i].msg_hdr;
    unsigned char *out = self->send_control + (size_t)i * CONTROL_SIZE;
    for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(received); cmsg != NULL; cmsg = CMSG_NXTHDR(received, cmsg)) {
        if (cmsg->cmsg_level == IPPROTO_IPV6 && cmsg->cmsg_type == IPV6_PKTINFO &&
            cmsg->cmsg_len >= CMSG_LEN(sizeof(struct in6_pktinfo))) {
            struct cmsghdr *reply = (struct cmsghdr *)out;
            memset(out, 0, CMSG_SPACE(sizeof(struct in6_pktinfo)));
            reply->cmsg_level = IPPROTO_IPV6;
            reply->cmsg_type = IPV6_PKTINFO;
            reply->cmsg_len = CMSG_LEN(sizeof(struct in6_pktinfo));
            memcpy(CMSG_DATA(reply), CMSG_DATA(cmsg), sizeof(struct in6_pktinfo));
            return CMSG_SPACE(sizeof(struct in6_pktinfo));
        }
        if (cmsg->cmsg_level == IPPROTO_IP && cmsg->cmsg_type == IP_PKTINFO &&
            cmsg->cmsg_len >= CMSG_LEN(sizeof(struct in_pktinfo))) {
            struct in_pktinfo info;
            memcpy(&info, CMSG_DATA(cmsg), sizeof info);
            struct cmsghdr *reply = (struct cmsghdr *)out;
            memset(out, 0, CMSG_SPACE(sizeof(struct in_pktinfo)));
            reply->cmsg_level = IPPROTO_IP;
            reply->cmsg_type = IP_PKTINFO;
            reply->cmsg_len = CMSG_LEN(sizeof(struct in_pktinfo));
            /* Send from the address the query was sent to; any interface. */
            struct in_pktinfo answer = {0};
            answer.ipi_spec_dst = info.ipi_addr;
            memcpy(CMSG_DATA(reply), &answer, sizeof answer);
            return CMSG_SPACE(sizeof(struct in_pktinfo));
        }
    }
    return 0;
}

/* Queues the reply to datagram i, size bytes in its send slot: to its sender, with the control data
 * the reply needs. send() moves headers to close gaps, so every field is set here. */
static void queue(Batch *self, unsigned int i, size_t size) {
    struct msghdr *header = &self->send[i].msg_hdr;
    self->send_iov[i].iov_len = size;
    header->msg_iov = &self->send_iov[i];
    header->msg_iovlen = 1;
    header->msg_flags = 0;
    header->msg_name = &self->names[i];
    header->msg_namelen = self->recv[i].msg_hdr.msg_namelen;
    size_t control = self->pktinfo ? reply_control(self, i) : 0;
    header->msg_control = control ? self->send_control + (size_t)i * CONTROL_SIZE : NULL;
    header->msg_controllen = control;
    self->queued[i] = 1;
}

static PyObject *Batch_queue_reply(Batch *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "queue_reply(i, reply)");
        return NULL;
    }
    Py_ssize_t i = PyLong_AsSsize_t(args[0]);
    if (i == -1 && PyErr_Occurred()) return NULL;
    if (check_index(self, i) < 0) return NULL;
    Py_buffer reply;
    if (PyObject_GetBuffer(args[1], &reply, PyBUF_SIMPLE) < 0) return NULL;
    if ((size_t)reply.len > self->size) {
        PyBuffer_Release(&reply);
        Py_RETURN_FALSE;
    }
    memcpy(self->send_data + (size_t)i * self->size, reply.buf, reply.len);
    queue(self, (unsigned int)i, (size_t)reply.len);
    PyBuffer_Release(&reply);
    Py_RETURN_TRUE;
}

static PyObject *Batch_send(Batch *self, PyObject *Py_UNUSED(ignored)) {
    unsigned int queued = 0, sent_total = 0;
    for (unsigned int slot = 0; slot < self->count; slot++) { /* close the gaps of datagrams not answered */
        if (!self->queued[slot]) continue;
        self->queued[slot] = 0;
        if (slot != queued) self->send[queued] = self->send[slot];
        queued++;
    }
    while (sent_total < queued) {
        int sent = sendmmsg(self->fd, self->send + sent_total, queued - sent_total, MSG_DONTWAIT);
        if (sent <= 0) {
            /* A full buffer: the rest is lost (UDP; clients retry). A peer that cannot be reached: skip it. */
            if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS))
                return PyLong_FromUnsignedLong(queued - sent_total);
            sent = 1;
        }
        sent_total += (unsigned int)sent;
    }
    return PyLong_FromLong(0);
}

/* ---- answering ------------------------------------------------------------------------ */

/* The arrays of one QueryStats, held for one answer() call. */
typedef struct {
    Py_buffer requests, rcodes, durations, request_sizes, response_sizes, type_slots;
    int held;
    unsigned long long duration_ns;
} Counters;

static int hold_array(PyObject *stats, PyObject *name, Py_buffer *view, Py_ssize_t itemsize, Py_ssize_t minimum) {
    PyObject *array = PyObject_GetAttr(stats, name);
    if (array == NULL) return -1;
    int failed = PyObject_GetBuffer(array, view, PyBUF_WRITABLE | PyBUF_FORMAT);
    Py_DECREF(array);
    if (failed) return -1;
    if (view->itemsize != itemsize || view->len / itemsize < minimum) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_ValueError, "QueryStats.%U has the wrong layout", name);
        return -1;
    }
    return 0;
}

static void release_counters(Counters *counters) {
    Py_buffer *views[] = {&counters->requests,      &counters->rcodes,         &counters->durations,
                          &counters->request_sizes, &counters->response_sizes, &counters->type_slots};
    for (int k = 0; k < counters->held; k++) PyBuffer_Release(views[k]);
    counters->held = 0;
}

static int hold_counters(PyObject *stats, Counters *counters) {
    memset(counters, 0, sizeof *counters);
    if (hold_array(stats, s_requests, &counters->requests, 8, 2)) return -1;
    counters->held = 1;
    if (hold_array(stats, s_rcodes, &counters->rcodes, 8, 16)) goto fail;
    counters->held = 2;
    if (hold_array(stats, s_durations, &counters->durations, 8, DURATION_SLOTS)) goto fail;
    counters->held = 3;
    if (hold_array(stats, s_request_sizes, &counters->request_sizes, 8, 65536)) goto fail;
    counters->held = 4;
    if (hold_array(stats, s_response_sizes, &counters->response_sizes, 8, 65536)) goto fail;
    counters->held = 5;
    PyObject *slots = PyObject_GetAttr(stats, s_type_slots);
    if (slots == NULL) goto fail;
    int failed = PyObject_GetBuffer(slots, &counters->type_slots, PyBUF_SIMPLE);
    Py_DECREF(slots);
    if (failed) goto fail;
    counters->held = 6;
    if (counters->type_slots.len != 65536) {
        PyErr_SetString(PyExc_ValueError, "QueryStats.type_slots must have 65536 entries");
        goto fail;
    }
    return 0;
fail:
    release_counters(counters);
    return -1;
}

static int add_duration(PyObject *stats, unsigned long long nanoseconds) {
    PyObject *before = PyObject_GetAttr(stats, s_duration_ns);
    if (before == NULL) return -1;
    PyObject *added = PyLong_FromUnsignedLongLong(nanoseconds);
    PyObject *after = added ? PyNumber_Add(before, added) : NULL;
    Py_DECREF(before);
    Py_XDECREF(added);
    if (after == NULL) return -1;
    int failed = PyObject_SetAttr(stats, s_duration_ns, after);
    Py_DECREF(after);
    return failed;
}

static inline unsigned long long now_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (unsigned long long)now.tv_sec * 1000000000ULL + (unsigned long long)now.tv_nsec;
}

/* QueryStats.record, for an answered query. */
static void count_query(Counters *counters, int ipv6, unsigned int qtype, size_t query_size, unsigned char rcode,
                        size_t response_size, unsigned long long nanoseconds) {
    uint64_t *requests = counters->requests.buf;
    Py_ssize_t per_family = counters->requests.len / 8 / 2;
    unsigned char slot = ((const unsigned char *)counters->type_slots.buf)[qtype];
    if (slot < per_family) requests[ipv6 * per_family + slot] += 1;
    unsigned long long quarter_ms = nanoseconds ? (nanoseconds - 1) / DURATION_SLOT_NS : 0;
    unsigned int duration = quarter_ms ? 64 - __builtin_clzll(quarter_ms) : 0;
    ((uint64_t *)counters->durations.buf)[duration < DURATION_SLOTS - 1 ? duration : DURATION_SLOTS - 1] += 1;
    counters->duration_ns += nanoseconds;
    ((uint64_t *)counters->request_sizes.buf)[query_size & 0xFFFF] += 1;
    ((uint64_t *)counters->rcodes.buf)[rcode & 0x0F] += 1;
    ((uint64_t *)counters->response_sizes.buf)[response_size & 0xFFFF] += 1;
}

/* A Python int attribute as a C integer; -1 with an exception set when it is not one. */
static Py_ssize_t int_attribute(PyObject *object, PyObject *name) {
    PyObject *value = PyObject_GetAttr(object, name);
    if (value == NULL) return -1;
    Py_ssize_t result = PyLong_AsSsize_t(value);
    Py_DECREF(value);
    return result;
}

enum { TAKEN = 1, LEFT = 0, FAILED = -1 };

/* What one answer's records put into a response: one or two slices of a bytes object (records of
 * one size), or `length` bytes of records taken from a tuple (several sizes). */
typedef struct {
    const char *pieces[2];
    Py_ssize_t lengths[2];
    PyObject *records; /* owned */
    Py_ssize_t start, taken, length;
} Section;

/* `Answer.section(start)`: window records from the start-th, wrapping around. */
static int answer_section(PyObject *answer, Py_ssize_t start, Py_ssize_t count, Py_ssize_t window, Section *section) {
    memset(section, 0, sizeof *section);
    Py_ssize_t size = int_attribute(answer, s_size);
    if (size < 0) return FAILED;
    PyObject *records = PyObject_GetAttr(answer, s_records);
    if (records == NULL) return FAILED;
    section->records = records;
    if (size > 0 && PyBytes_Check(records)) {
        const char *bytes = PyBytes_AS_STRING(records);
        Py_ssize_t total = PyBytes_GET_SIZE(records);
        if (count == 1) {
            section->pieces[0] = bytes, section->lengths[0] = total;
        } else {
            Py_ssize_t cut = start * size, end = (start + window) * size;
            if (cut > total || end - total > total) goto wrong;
            section->pieces[0] = bytes + cut;
            section->lengths[0] = (end <= total ? end : total) - cut;
            if (end > total) section->pieces[1] = bytes, section->lengths[1] = end - total;
        }
        section->length = section->lengths[0] + section->lengths[1];
        return TAKEN;
    }
    if (size == 0 && PyTuple_Check(records) && PyTuple_GET_SIZE(records) == count && window <= count) {
        section->start = start;
        section->taken = count == 1 ? 1 : window;
        for (Py_ssize_t k = 0; k < section->taken; k++) {
            PyObject *record = PyTuple_GET_ITEM(records, (start + k) % count);
            if (!PyBytes_Check(record)) goto wrong;
            section->length += PyBytes_GET_SIZE(record);
        }
        return TAKEN;
    }
wrong:
    PyErr_SetString(PyExc_TypeError, "an Answer of an unexpected shape");
    return FAILED;
}

static unsigned char *write_section(unsigned char *at, const Section *section) {
    if (section->taken) {
        Py_ssize_t count = PyTuple_GET_SIZE(section->records);
        for (Py_ssize_t k = 0; k < section->taken; k++) {
            PyObject *record = PyTuple_GET_ITEM(section->records, (section->start + k) % count);
            memcpy(at, PyBytes_AS_STRING(record), (size_t)PyBytes_GET_SIZE(record));
            at += PyBytes_GET_SIZE(record);
        }
        return at;
    }
    for (int k = 0; k < 2; k++) {
        if (section->lengths[k]) memcpy(at, section->pieces[k], (size_t)section->lengths[k]);
        at += section->lengths[k];
    }
    return at;
}

static inline void put_header(unsigned char *out, const unsigned char *query, unsigned char flags1,
                              unsigned char flags2, unsigned int an, unsigned int ns, unsigned int ar) {
    out[0] = query[0], out[1] = query[1];
    out[2] = flags1, out[3] = flags2;
    out[4] = 0, out[5] = 1;
    out[6] = an >> 8, out[7] = an & 0xFF;
    out[8] = ns >> 8, out[9] = ns & 0xFF;
    out[10] = ar >> 8, out[11] = ar & 0xFF;
}

/* Our OPT record: root owner, type OPT, our payload size, extended rcode 0, version 0, DO echoed. */
static inline void put_opt(unsigned char *at, int dnssec_ok) {
    memcpy(at, OPT_HEAD, sizeof OPT_HEAD);
    memset(at + 5, 0, 6);
    if (dnssec_ok) at[7] = 0x80;
}

/* The Answer for qtype at node (borrowed, or NULL for none); LEFT for ANY, FAILED on error. */
static int pick_answer(PyObject *node, unsigned int qtype, PyObject **answer) {
    PyObject *found = NULL, *others;
    *answer = NULL;
    if (qtype == TYPE_AAAA || qtype == TYPE_A) {
        found = PyObject_GetAttr(node, qtype == TYPE_AAAA ? s_aaaa : s_a);
        if (found == NULL) return FAILED;
        Py_DECREF(found); /* the node holds it */
        if (found != Py_None) {
            *answer = found;
            return TAKEN;
        }
        found = NULL;
    }
    others = PyObject_GetAttr(node, s_others);
    if (others == NULL) return FAILED;
    if (others == Py_None) {
        Py_DECREF(others);
        return TAKEN;
    }
    if (!PyDict_Check(others)) {
        Py_DECREF(others);
        PyErr_SetString(PyExc_TypeError, "Node.others is not a dict");
        return FAILED;
    }
    if (qtype != TYPE_AAAA && qtype != TYPE_A) {
        PyObject *key = PyLong_FromUnsignedLong(qtype);
        found = key ? PyDict_GetItemWithError(others, key) : NULL;
        Py_XDECREF(key);
        if (found == NULL && PyErr_Occurred()) {
            Py_DECREF(others);
            return FAILED;
        }
    }
    if (found == NULL) { /* no RRset of this type: the CNAME, if the name has one */
        found = PyDict_GetItemWithError(others, s_cname_key);
        if (found == NULL && PyErr_Occurred()) {
            Py_DECREF(others);
            return FAILED;
        }
    }
    *answer = found; /* borrowed from others, which the node holds */
    Py_DECREF(others);
    return TAKEN;
}

/* One plain query as the fast path of dnsd.wire.respond parses it. */
typedef struct {
    const unsigned char *wire;
    size_t length;
    size_t end; /* just after the question name */
    size_t name_length;
    unsigned int qtype;
    int edns, dnssec_ok;
    size_t limit; /* the largest response that fits */
    char lowered[256];
} Query;

/* Whether datagram i is a query the fast path takes: one IN question, no or a plain OPT record. */
static int parse_query(Batch *self, unsigned int i, int signed_possible, Query *q) {
    const unsigned char *query = self->recv_data + (size_t)i * self->size;
    size_t length = self->recv[i].msg_len;
    if (self->recv[i].msg_hdr.msg_flags & MSG_TRUNC || length < 17) return 0;
    if (query[2] & 0xF8 || query[4] || query[5] != 1 || query[6] || query[7] || query[8] || query[9]) return 0;
    const unsigned char *root = memchr(query + 12, 0, length - 12);
    if (root == NULL) return 0;
    size_t end = (size_t)(root - query) + 1;
    if (end - 12 > 255 || end + 4 > length) return 0;
    unsigned int qtype = (unsigned int)query[end] << 8 | query[end + 1];
    if (query[end + 2] || query[end + 3] != 1) return 0;
    if (qtype == 0 || qtype == TYPE_OPT || qtype == TYPE_IXFR || qtype == TYPE_AXFR || qtype == TYPE_ANY) return 0;
    q->edns = q->dnssec_ok = 0;
    q->limit = UDP_MINIMUM;
    if (query[10] == 0 && query[11] == 0) {
        if (length != end + 4) return 0;
    } else if (query[10] == 0 && query[11] == 1) {
        size_t opt = end + 4;
        /* Transfers.claims: with TSIG keys, a query whose last 400 bytes hold what a TSIG record
         * looks like is the transfer module's (even inside an EDNS option: it decides). */
        size_t tail = length < 400 ? length : 400;
        if (signed_possible && memmem(query + length - tail, tail, TSIG_TAIL, sizeof TSIG_TAIL)) return 0;
        if (opt + 11 > length || query[opt] || query[opt + 1] || query[opt + 2] != TYPE_OPT || query[opt + 6]) return 0;
        if (opt + 11 + ((size_t)query[opt + 9] << 8 | query[opt + 10]) != length) return 0;
        size_t payload = (size_t)query[opt + 3] << 8 | query[opt + 4];
        q->limit = payload < UDP_MINIMUM ? UDP_MINIMUM : payload > UDP_PAYLOAD ? UDP_PAYLOAD : payload;
        q->edns = 1;
        q->dnssec_ok = (query[opt + 7] & 0x80) != 0;
    } else {
        return 0;
    }
    q->wire = query, q->length = length, q->end = end, q->qtype = qtype;
    q->name_length = end - 12;
    for (size_t k = 0; k < q->name_length; k++) {
        unsigned char c = query[12 + k];
        q->lowered[k] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
    }
    return 1;
}

/* Whether the name is exactly one uncompressed name (`memchr` found its end, not its labels). */
static int well_formed(const Query *q) {
    size_t pos = 0, last = q->name_length - 1;
    while (pos < last) {
        unsigned char label = (unsigned char)q->lowered[pos];
        if (label > 63) return 0;
        pos += (size_t)label + 1;
    }
    return pos == last;
}

static int ends_with_any(const Query *q, PyObject *suffixes) {
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(suffixes); k++) {
        PyObject *suffix = PyTuple_GET_ITEM(suffixes, k);
        size_t size = (size_t)PyBytes_GET_SIZE(suffix);
        if (size <= q->name_length && !memcmp(q->lowered + q->name_length - size, PyBytes_AS_STRING(suffix), size))
            return 1;
    }
    return 0;
}

/* `Index.zone_for`: the most specific zone of the name (borrowed), NULL for none (or an error). */
static PyObject *zone_for(const Query *q, PyObject *zones) {
    size_t pos = 0;
    while (pos < q->name_length) {
        PyObject *suffix = PyBytes_FromStringAndSize(q->lowered + pos, (Py_ssize_t)(q->name_length - pos));
        if (suffix == NULL) return NULL;
        PyObject *zone = PyDict_GetItemWithError(zones, suffix);
        Py_DECREF(suffix);
        if (zone != NULL || PyErr_Occurred()) return zone;
        unsigned char label = (unsigned char)q->lowered[pos];
        if (label == 0) break;
        pos += (size_t)label + 1;
    }
    return NULL;
}

/* The response without records: REFUSED (no zone), or NXDOMAIN/NODATA with the zone's SOA. */
static int write_negative(Batch *self, unsigned int i, const Query *q, PyObject *zone, unsigned char rcode,
                          size_t *size) {
    unsigned char *out = self->send_data + (size_t)i * self->size;
    const unsigned char *query = q->wire;
    size_t question = q->end + 4 - 12;
    unsigned char rd = query[2] & RD, cd = query[3] & CD;
    unsigned char *at = out + 12 + question;
    if (zone == NULL) {
        put_header(out, query, QR | rd, cd | rcode, 0, 0, q->edns);
    } else {
        PyObject *apex = PyObject_GetAttr(zone, s_apex_wire);
        PyObject *soa = apex ? PyObject_GetAttr(zone, s_negative_soa) : NULL;
        if (soa == NULL || !PyBytes_Check(apex) || !PyBytes_Check(soa) ||
            (size_t)PyBytes_GET_SIZE(apex) > q->name_length) {
            Py_XDECREF(apex);
            Py_XDECREF(soa);
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "ZoneInfo of an unexpected shape");
            return FAILED;
        }
        size_t soa_length = (size_t)PyBytes_GET_SIZE(soa);
        if (12 + question + 2 + soa_length + (q->edns ? OPT_SIZE : 0) > q->limit) {
            Py_DECREF(apex);
            Py_DECREF(soa);
            return LEFT; /* truncated: rare, the reference path answers it */
        }
        unsigned int pointer = 0xC00C + (unsigned int)(q->name_length - (size_t)PyBytes_GET_SIZE(apex));
        put_header(out, query, QR | AA | rd, cd | rcode, 0, 1, q->edns);
        at[0] = pointer >> 8, at[1] = pointer & 0xFF;
        memcpy(at + 2, PyBytes_AS_STRING(soa), soa_length);
        at += 2 + soa_length;
        Py_DECREF(apex);
        Py_DECREF(soa);
    }
    memcpy(out + 12, query + 12, question);
    if (q->edns) put_opt(at, q->dnssec_ok);
    *size = (size_t)(at - out) + (q->edns ? OPT_SIZE : 0);
    return TAKEN;
}

/* The response with answer's records (the additional section where it fits). */
static int write_answer(Batch *self, unsigned int i, const Query *q, PyObject *answer, size_t *size) {
    Py_ssize_t count = int_attribute(answer, s_count);
    Py_ssize_t window = count < 0 ? -1 : int_attribute(answer, s_window);
    Py_ssize_t additional_count = window < 0 ? -1 : int_attribute(answer, s_additional_count);
    if (additional_count < 0) return FAILED;
    PyObject *additional = PyObject_GetAttr(answer, s_additional);
    if (additional == NULL) return FAILED;
    if (!PyBytes_Check(additional) || count < 1) {
        Py_DECREF(additional);
        PyErr_SetString(PyExc_TypeError, "an Answer of an unexpected shape");
        return FAILED;
    }
    Py_ssize_t start = count > 1 ? (Py_ssize_t)(self->turn++ % (unsigned long long)count) : 0;
    Section section;
    if (answer_section(answer, start, count, window, &section) != TAKEN) {
        Py_XDECREF(section.records);
        Py_DECREF(additional);
        return FAILED;
    }
    size_t question = q->end + 4 - 12;
    size_t extra = (size_t)PyBytes_GET_SIZE(additional);
    size_t total = 12 + question + (size_t)section.length + (q->edns ? OPT_SIZE : 0);
    unsigned int ar = (unsigned int)additional_count;
    if (total + extra <= q->limit) {
        total += extra;
    } else {
        extra = 0, ar = 0; /* the additional section does not fit: the answer alone */
    }
    if (total > q->limit) {
        Py_DECREF(section.records);
        Py_DECREF(additional);
        return LEFT; /* truncated: the reference path answers it */
    }
    unsigned char *out = self->send_data + (size_t)i * self->size;
    put_header(out, q->wire, QR | AA | (q->wire[2] & RD), q->wire[3] & CD, (unsigned int)window, 0, ar + q->edns);
    memcpy(out + 12, q->wire + 12, question);
    unsigned char *at = write_section(out + 12 + question, &section);
    if (extra) memcpy(at, PyBytes_AS_STRING(additional), extra);
    at += extra;
    Py_DECREF(section.records);
    Py_DECREF(additional);
    if (q->edns) put_opt(at, q->dnssec_ok);
    *size = total;
    return TAKEN;
}

/* The index's tables for one answer() call (borrowed: the caller holds the index). */
typedef struct {
    PyObject *nodes, *zones, *rendered_suffixes, *rendered_cache;
} Tables;

/* `Index.lookup` as far as C can go: the node of the name (borrowed; NULL: no such name), or LEFT
 * for a pod or endpoint name not rendered recently (only `Index.rendered` can tell). */
static int find_node(const Query *q, const Tables *tables, PyObject **found) {
    *found = NULL;
    PyObject *key = PyBytes_FromStringAndSize(q->lowered, (Py_ssize_t)q->name_length);
    if (key == NULL) return FAILED;
    int result = TAKEN;
    PyObject *node = PyDict_GetItemWithError(tables->nodes, key); /* borrowed: the dict holds it */
    int is_node = 0; /* a node with an owner: not an empty non-terminal */
    if (node != NULL) {
        PyObject *owner = PyObject_GetAttr(node, s_owner);
        if (owner == NULL) {
            result = FAILED;
            goto done;
        }
        Py_DECREF(owner); /* the node holds it */
        is_node = owner != Py_None;
    } else if (PyErr_Occurred()) {
        result = FAILED;
        goto done;
    }
    /* No node, or an empty non-terminal: a rendered pod or endpoint name, if its suffix says it may
     * be; answered here when it was rendered recently. */
    if (!is_node && ends_with_any(q, tables->rendered_suffixes)) {
        node = PyDict_GetItemWithError(tables->rendered_cache, key);
        if (node == NULL) result = PyErr_Occurred() ? FAILED : LEFT;
    }
    *found = node;
done:
    Py_DECREF(key);
    return result;
}

/* Answers datagram i into its send slot if it is a query the fast path takes: `dnsd.wire._answer`
 * for a name that is a node, or that is in no node and cannot be a rendered name. */
static int answer_one(Batch *self, unsigned int i, const Tables *tables, int signed_possible, Counters *counters) {
    unsigned long long started = now_ns();
    Query q;
    if (!parse_query(self, i, signed_possible, &q)) return LEFT;
    PyObject *node;
    int found = find_node(&q, tables, &node);
    if (found != TAKEN) return found;
    if (node == NULL && !well_formed(&q)) return LEFT; /* dnspython's parser decides */

    size_t size = 0;
    int written;
    unsigned char rcode = 0;
    if (node == NULL) {
        PyObject *zone = zone_for(&q, tables->zones);
        if (zone == NULL && PyErr_Occurred()) return FAILED;
        rcode = zone == NULL ? RCODE_REFUSED : RCODE_NXDOMAIN;
        written = write_negative(self, i, &q, zone, rcode, &size);
    } else {
        PyObject *answer;
        int picked = pick_answer(node, q.qtype, &answer);
        if (picked != TAKEN) return picked;
        if (answer == NULL) { /* NODATA: the zone's SOA in the authority section */
            PyObject *zone = PyObject_GetAttr(node, s_zone);
            if (zone == NULL) return FAILED;
            written = write_negative(self, i, &q, zone, 0, &size);
            Py_DECREF(zone);
        } else {
            written = write_answer(self, i, &q, answer, &size);
        }
    }
    if (written != TAKEN) return written;
    queue(self, i, size);
    count_query(counters, sender_is_ipv6(self, i), q.qtype, q.length, rcode, size, now_ns() - started);
    return TAKEN;
}

static PyObject *Batch_answer(Batch *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "answer(index, stats, signed_possible)");
        return NULL;
    }
    PyObject *index = args[0], *stats = args[1];
    int signed_possible = PyObject_IsTrue(args[2]);
    if (signed_possible < 0) return NULL;
    Tables tables = {NULL, NULL, NULL, NULL};
    int fast = 0;
    if (index != Py_None) {
        PyObject *synced = PyObject_GetAttr(index, s_synced);
        if (synced == NULL) return NULL;
        fast = PyObject_IsTrue(synced);
        Py_DECREF(synced);
        if (fast < 0) return NULL;
    }
    if (fast) {
        tables.nodes = PyObject_GetAttr(index, s_nodes);
        tables.zones = tables.nodes ? PyObject_GetAttr(index, s_zones) : NULL;
        tables.rendered_suffixes = tables.zones ? PyObject_GetAttr(index, s_rendered_suffixes) : NULL;
        tables.rendered_cache = tables.rendered_suffixes ? PyObject_GetAttr(index, s_rendered_cache) : NULL;
        if (tables.rendered_cache == NULL || !PyDict_Check(tables.nodes) || !PyDict_Check(tables.zones) ||
            !PyTuple_Check(tables.rendered_suffixes) || !PyDict_Check(tables.rendered_cache)) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "an Index of an unexpected shape");
            goto fail;
        }
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(tables.rendered_suffixes); k++) {
            if (!PyBytes_Check(PyTuple_GET_ITEM(tables.rendered_suffixes, k))) {
                PyErr_SetString(PyExc_TypeError, "Index.rendered_suffixes must be bytes");
                goto fail;
            }
        }
    }
    PyObject *left = PyList_New(0);
    if (left == NULL) goto fail;
    Counters counters;
    if (fast && hold_counters(stats, &counters) < 0) {
        Py_DECREF(left);
        goto fail;
    }
    for (unsigned int i = 0; i < self->received; i++) {
        if (sender_port(self, i) == 0) continue; /* nobody can receive a reply on port 0: a reflection */
        int taken = fast ? answer_one(self, i, &tables, signed_possible, &counters) : LEFT;
        if (taken == FAILED) {
            /* A bug or an index of an unexpected shape: the reference path answers (or reports) it. */
            PyErr_WriteUnraisable(index);
            taken = LEFT;
        }
        if (taken == LEFT) {
            PyObject *number = PyLong_FromUnsignedLong(i);
            if (number == NULL || PyList_Append(left, number) < 0) {
                Py_XDECREF(number);
                Py_DECREF(left);
                if (fast) release_counters(&counters);
                goto fail;
            }
            Py_DECREF(number);
        }
    }
    if (fast) {
        release_counters(&counters);
        if (counters.duration_ns && add_duration(stats, counters.duration_ns) < 0) {
            Py_DECREF(left);
            goto fail;
        }
    }
    Py_XDECREF(tables.nodes);
    Py_XDECREF(tables.zones);
    Py_XDECREF(tables.rendered_suffixes);
    Py_XDECREF(tables.rendered_cache);
    return left;
fail:
    Py_XDECREF(tables.nodes);
    Py_XDECREF(tables.zones);
    Py_XDECREF(tables.rendered_suffixes);
    Py_XDECREF(tables.rendered_cache);
    return NULL;
}

static PyMethodDef Batch_methods[] = {
    {"receive", (PyCFunction)Batch_receive, METH_NOARGS,
     "Read up to count datagrams without blocking; 0 when none is waiting. Replies queued and\n"
     "not sent are dropped (send() first)."},
    {"datagram", (PyCFunction)Batch_datagram, METH_O, "The i-th datagram received, None when it was truncated."},
    {"sender", (PyCFunction)Batch_sender, METH_O, "The i-th sender's port and whether it is a real IPv6 sender."},
    {"peer", (PyCFunction)Batch_peer, METH_O, "The i-th sender as a raw sockaddr."},
    {"queue_reply", (PyCFunction)(void (*)(void))Batch_queue_reply, METH_FASTCALL,
     "Queue reply to the sender of the i-th datagram; False when it does not fit."},
    {"send", (PyCFunction)Batch_send, METH_NOARGS, "Send the queued replies; how many could not be sent."},
    {"answer", (PyCFunction)(void (*)(void))Batch_answer, METH_FASTCALL,
     "answer(index, stats, signed_possible) -> the indices of the datagrams left to the caller.\n\n"
     "Answers the plain queries the index (None: none) can answer without rendering a name into\n"
     "the send queue and counts them in stats; skips senders on port 0; signed_possible: TSIG\n"
     "keys are configured, so leave the queries Transfers.claims would claim."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject BatchType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "dnsd.transports._batch.DatagramBatch",
    .tp_basicsize = sizeof(Batch),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Preallocated recvmmsg/sendmmsg arrays for one UDP socket, answering plain queries in C.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Batch_init,
    .tp_dealloc = (destructor)Batch_dealloc,
    .tp_methods = Batch_methods,
};

static struct PyModuleDef batch_module = {
    PyModuleDef_HEAD_INIT, .m_name = "dnsd.transports._batch",
    .m_doc = "Batched UDP I/O answering plain queries in C (see dnsd/transports/_batch.c).", .m_size = -1,
};

PyMODINIT_FUNC PyInit__batch(void) {
    struct {
        PyObject **slot;
        const char *text;
    } names[] = {
        {&s_owner, "owner"},           {&s_aaaa, "aaaa"},
        {&s_a, "a"},                   {&s_others, "others"},
        {&s_zone, "zone"},             {&s_apex_wire, "apex_wire"},
        {&s_negative_soa, "negative_soa"}, {&s_count, "count"},
        {&s_window, "window"},         {&s_records, "records"},
        {&s_size, "size"},             {&s_additional, "additional"},
        {&s_additional_count, "additional_count"}, {&s_requests, "requests"},
        {&s_rcodes, "rcodes"},         {&s_durations, "durations"},
        {&s_request_sizes, "request_sizes"}, {&s_response_sizes, "response_sizes"},
        {&s_duration_ns, "duration_ns"}, {&s_type_slots, "type_slots"},
        {&s_synced, "synced"},         {&s_nodes, "nodes"},
        {&s_zones, "zones"},           {&s_rendered_suffixes, "rendered_suffixes"},
        {&s_rendered_cache, "rendered_cache"},
    };
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        *names[k].slot = PyUnicode_InternFromString(names[k].text);
        if (*names[k].slot == NULL) return NULL;
    }
    s_cname_key = PyLong_FromLong(TYPE_CNAME);
    if (s_cname_key == NULL || PyType_Ready(&BatchType) < 0) return NULL;
    PyObject *module = PyModule_Create(&batch_module);
    if (module == NULL) return NULL;
    Py_INCREF(&BatchType);
    if (PyModule_AddObject(module, "DatagramBatch", (PyObject *)&BatchType) < 0) {
        Py_DECREF(&BatchType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
