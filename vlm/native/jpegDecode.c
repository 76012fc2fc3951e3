/*
 * A minimal N-API addon over libjpeg-turbo's TurboJPEG API: read a JPEG's header, and decode it
 * with DCT-domain scaling (1/2, 1/4, 1/8: the IDCT itself produces the smaller image, so most of
 * the full-size decode's work is never done). sharp (libvips) exposes this only from a 3x
 * reduction; the format stage's thumbnails need about 2x. Built by scripts/build-jpeg-decoder.sh
 * against Debian's libturbojpeg, linked statically with its symbols hidden so it cannot collide
 * with the libjpeg inside sharp's libvips in the same process.
 *
 * header(bytes) -> { width, height, subsampling, colorspace }            (synchronous, cheap)
 * decode(bytes, scaleDenom, gray, output) -> Promise<{ width, height, channels }> (pixels in output)
 *   Runs on the libuv thread pool. Any libjpeg warning is an error (the caller then leaves the
 *   image to sharp, which makes the keep/drop decision as before), and progressive images with
 *   an absurd number of scans are refused rather than decoded for minutes.
 */
#define NAPI_VERSION 8
#include <node_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>

#define CHECK(env, call)                                                   \
  do {                                                                     \
    if ((call) != napi_ok) {                                               \
      napi_throw_error((env), NULL, "jpegDecode: N-API call failed: " #call); \
      return NULL;                                                         \
    }                                                                      \
  } while (0)

static int get_bytes(napi_env env, napi_value value, unsigned char **data, size_t *length) {
  bool is_typed = false;
  if (napi_is_typedarray(env, value, &is_typed) != napi_ok || !is_typed) return 0;
  napi_typedarray_type type;
  napi_value buffer;
  size_t offset;
  void *base;
  if (napi_get_typedarray_info(env, value, &type, length, &base, &buffer, &offset) != napi_ok) return 0;
  if (type != napi_uint8_array) return 0;
  *data = (unsigned char *)base;
  return 1;
}

static napi_value set_int(napi_env env, napi_value obj, const char *name, int v) {
  napi_value n;
  if (napi_create_int32(env, v, &n) != napi_ok) return NULL;
  if (napi_set_named_property(env, obj, name, n) != napi_ok) return NULL;
  return obj;
}

static napi_value header(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  unsigned char *data;
  size_t length;
  if (argc < 1 || !get_bytes(env, argv[0], &data, &length)) {
    napi_throw_type_error(env, NULL, "header(bytes): bytes must be a Uint8Array");
    return NULL;
  }
  tjhandle tj = tjInitDecompress();
  if (!tj) {
    napi_throw_error(env, NULL, "jpegDecode: tjInitDecompress failed");
    return NULL;
  }
  int width, height, subsamp, colorspace;
  int rc = tjDecompressHeader3(tj, data, (unsigned long)length, &width, &height, &subsamp, &colorspace);
  char message[256];
  if (rc != 0) snprintf(message, sizeof message, "%s", tjGetErrorStr2(tj));
  tjDestroy(tj);
  if (rc != 0) {
    napi_throw_error(env, NULL, message);
    return NULL;
  }
  napi_value out;
  CHECK(env, napi_create_object(env, &out));
  if (!set_int(env, out, "width", width) || !set_int(env, out, "height", height) || !set_int(env, out, "subsampling", subsamp) ||
      !set_int(env, out, "colorspace", colorspace))
    return NULL;
  return out;
}

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref input_ref;
  napi_ref output_ref;
  unsigned char *input;
  size_t input_length;
  unsigned char *output;
  size_t output_length;
  int denom;
  int gray;
  /* results */
  int width, height, channels;
  char error[256];
} DecodeJob;

static void decode_execute(napi_env env, void *data) {
  (void)env;
  DecodeJob *job = (DecodeJob *)data;
  tjhandle tj = tjInitDecompress();
  if (!tj) {
    snprintf(job->error, sizeof job->error, "tjInitDecompress failed");
    return;
  }
  int width, height, subsamp, colorspace;
  if (tjDecompressHeader3(tj, job->input, (unsigned long)job->input_length, &width, &height, &subsamp, &colorspace) != 0) {
    snprintf(job->error, sizeof job->error, "%s", tjGetErrorStr2(tj));
    tjDestroy(tj);
    return;
  }
  tjscalingfactor sf = {1, job->denom};
  int w = TJSCALED(width, sf), h = TJSCALED(height, sf);
  int format = job->gray ? TJPF_GRAY : TJPF_RGB;
  int channels = tjPixelSize[format];
  if ((size_t)w * (size_t)h * (size_t)channels > job->output_length) {
    snprintf(job->error, sizeof job->error, "output buffer of %zu bytes is too small for %dx%dx%d", job->output_length, w, h, channels);
    tjDestroy(tj);
    return;
  }
  int flags = TJFLAG_STOPONWARNING | TJFLAG_LIMITSCANS;
  if (tjDecompress2(tj, job->input, (unsigned long)job->input_length, job->output, w, 0, h, format, flags) != 0) {
    snprintf(job->error, sizeof job->error, "%s", tjGetErrorStr2(tj));
    tjDestroy(tj);
    return;
  }
  tjDestroy(tj);
  job->width = w;
  job->height = h;
  job->channels = channels;
}

static void decode_complete(napi_env env, napi_status status, void *data) {
  DecodeJob *job = (DecodeJob *)data;
  napi_value result = NULL;
  int ok = status == napi_ok && !job->error[0] && job->width > 0 && napi_create_object(env, &result) == napi_ok &&
           set_int(env, result, "width", job->width) && set_int(env, result, "height", job->height) &&
           set_int(env, result, "channels", job->channels);
  if (ok) {
    napi_resolve_deferred(env, job->deferred, result);
  } else {
    napi_value message, error;
    napi_create_string_utf8(env, job->error[0] ? job->error : "decode failed", NAPI_AUTO_LENGTH, &message);
    napi_create_error(env, NULL, message, &error);
    napi_reject_deferred(env, job->deferred, error);
  }
  napi_delete_reference(env, job->input_ref);
  napi_delete_reference(env, job->output_ref);
  napi_delete_async_work(env, job->work);
  free(job);
}

/*
 * The caller passes the output buffer (at least ceil(w / d) x ceil(h / d) x channels bytes), so it
 * can reuse one across images: a fresh ~600 KB buffer per image made the garbage collector run
 * far more often on the format stage's main thread.
 */
static napi_value decode(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  unsigned char *data, *output;
  size_t length, output_length;
  int32_t denom = 1;
  bool gray = false;
  if (argc < 4 || !get_bytes(env, argv[0], &data, &length) || napi_get_value_int32(env, argv[1], &denom) != napi_ok ||
      napi_get_value_bool(env, argv[2], &gray) != napi_ok || !get_bytes(env, argv[3], &output, &output_length)) {
    napi_throw_type_error(env, NULL, "decode(bytes: Uint8Array, scaleDenom: number, gray: boolean, output: Uint8Array)");
    return NULL;
  }
  if (denom != 1 && denom != 2 && denom != 4 && denom != 8) {
    napi_throw_range_error(env, NULL, "decode: scaleDenom must be 1, 2, 4 or 8");
    return NULL;
  }
  DecodeJob *job = (DecodeJob *)calloc(1, sizeof(DecodeJob));
  if (!job) {
    napi_throw_error(env, NULL, "jpegDecode: out of memory");
    return NULL;
  }
  job->input = data;
  job->input_length = length;
  job->output = output;
  job->output_length = output_length;
  job->denom = denom;
  job->gray = gray;
  napi_value promise, name;
  /* The references keep both buffers alive (and unmoved) while the pool thread uses them. */
  if (napi_create_reference(env, argv[0], 1, &job->input_ref) != napi_ok || napi_create_reference(env, argv[3], 1, &job->output_ref) != napi_ok ||
      napi_create_promise(env, &job->deferred, &promise) != napi_ok ||
      napi_create_string_utf8(env, "jpegDecode", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_async_work(env, NULL, name, decode_execute, decode_complete, job, &job->work) != napi_ok ||
      napi_queue_async_work(env, job->work) != napi_ok) {
    free(job);
    napi_throw_error(env, NULL, "jpegDecode: could not queue the decode");
    return NULL;
  }
  return promise;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  CHECK(env, napi_create_function(env, "header", NAPI_AUTO_LENGTH, header, NULL, &fn));
  CHECK(env, napi_set_named_property(env, exports, "header", fn));
  CHECK(env, napi_create_function(env, "decode", NAPI_AUTO_LENGTH, decode, NULL, &fn));
  CHECK(env, napi_set_named_property(env, exports, "decode", fn));
  return exports;
}

NAPI_MODULE_INIT() { return init(env, exports); }
