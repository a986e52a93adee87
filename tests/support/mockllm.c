/*
 * mockllm: a local OpenAI- and Anthropic-compatible chat server for tests,
 * benchmarks and the offline default model.  docs/mockllm.md is its
 * reference: endpoints, headers, the rules file and the built-in rules.
 *
 * It is the HTTP test server with more routes: this file defines HTTPD_EXT
 * and includes httpd.c, whose connection handling, request parsing and
 * response writing it uses as they are.  A chat request is parsed with the
 * small JSON reader below (bounded in size and depth), answered from the
 * first matching rule, and written whole or as a paced SSE stream in the
 * request's dialect; a request may ask for faults with x-mock-fault.  Every
 * response of the mock's own routes goes through one struct mreq, attached
 * to the request and freed by ext_clear, which is also where a request
 * stops counting as in flight.  Relies on libuv (through httpd.c) only.
 *
 * Built alone it is build/tests/mockllm; built with AH_MOCKLLM_BUILTIN its
 * main is ah_mockllm_main, linked into the agenthost command (not into the
 * library) as `agenthost --mock-llm`, so that the installed command has the
 * offline model with it.
 */
#define HTTPD_EXT 1
#ifdef AH_MOCKLLM_BUILTIN
/* Built a second time into the agenthost command (Makefile): there the
 * entry point is ah_mockllm_main, which `agenthost --mock-llm` calls. */
int ah_mockllm_main(int argc, char **argv);
#define HTTPD_MAIN ah_mockllm_main
#endif
#define HTTPD_USAGE                                                                   \
  "usage: mockllm [--port N] [--rules FILE] [--chunk N] [--delay-ms M]\n"             \
  "               [--first-byte-ms F] [--api-key KEY] [--model NAME]\n"
#include "httpd.c"

#include <errno.h>
#include <time.h>

#define JSON_MAX ((size_t)8 << 20) /* a chat request body or a rules file */
#define JSON_DEPTH 64              /* nesting of arrays and objects */
#define RESULT_CUT 200             /* bytes of each tool result in {{tool_results}} */
#define ARG_CUT 200                /* bytes of a template's value in tool-call arguments */
#define SEARCH_MAX 20              /* results of one /search */

/* JSON ------------------------------------------------------------------ */

enum { J_NULL, J_FALSE, J_TRUE, J_NUM, J_STR, J_ARR, J_OBJ };

/* A parsed JSON value.  Strings are decoded (NUL-terminated, len bytes,
 * which may hold NULs); numbers keep their literal text in s.  Members of an
 * object are its kids, each with its key.  A value owns everything below
 * it; jv_free releases it. */
typedef struct jv {
  int t;
  char *s;
  size_t len;
  struct jv *kids;
  size_t n;
  char *key;
  size_t klen;
} jv;

typedef struct {
  const char *p, *end;
  int depth;
  const char *err;
} jparser;

static void jv_free(jv *v) {
  size_t i;
  for (i = 0; i < v->n; i++) jv_free(&v->kids[i]);
  free(v->kids);
  free(v->s);
  free(v->key);
  memset(v, 0, sizeof *v);
}

static void j_ws(jparser *jp) {
  while (jp->p < jp->end && (*jp->p == ' ' || *jp->p == '\t' || *jp->p == '\n' || *jp->p == '\r'))
    jp->p++;
}

static int j_fail(jparser *jp, const char *why) {
  if (!jp->err) jp->err = why;
  return -1;
}

/* Appends code point cp as UTF-8. */
static void sb_utf8(sbuf *b, unsigned long cp) {
  char u[4];
  size_t n;
  if (cp < 0x80) {
    u[0] = (char)cp, n = 1;
  } else if (cp < 0x800) {
    u[0] = (char)(0xc0 | cp >> 6), u[1] = (char)(0x80 | (cp & 0x3f)), n = 2;
  } else if (cp < 0x10000) {
    u[0] = (char)(0xe0 | cp >> 12), u[1] = (char)(0x80 | (cp >> 6 & 0x3f));
    u[2] = (char)(0x80 | (cp & 0x3f)), n = 3;
  } else {
    u[0] = (char)(0xf0 | cp >> 18), u[1] = (char)(0x80 | (cp >> 12 & 0x3f));
    u[2] = (char)(0x80 | (cp >> 6 & 0x3f)), u[3] = (char)(0x80 | (cp & 0x3f)), n = 4;
  }
  sb_put(b, u, n);
}

static int j_hex4(jparser *jp, unsigned long *out) {
  int i, h;
  unsigned long v = 0;
  if (jp->end - jp->p < 4) return j_fail(jp, "short \\u escape");
  for (i = 0; i < 4; i++) {
    if ((h = hexval((unsigned char)jp->p[i])) < 0) return j_fail(jp, "bad \\u escape");
    v = v * 16 + (unsigned long)h;
  }
  jp->p += 4;
  *out = v;
  return 0;
}

/* Parses a string (jp->p at its opening quote) into *out (len bytes). */
static int j_string(jparser *jp, char **out, size_t *len) {
  sbuf b = {0};
  jp->p++;
  sb_reserve(&b, 16);
  for (;;) {
    const char *run = jp->p;
    unsigned char ch;
    while (jp->p < jp->end && *jp->p != '"' && *jp->p != '\\' && (unsigned char)*jp->p >= 0x20)
      jp->p++;
    sb_put(&b, run, (size_t)(jp->p - run));
    if (jp->p == jp->end) break;
    ch = (unsigned char)*jp->p++;
    if (ch == '"') {
      *out = b.p;
      *len = b.len;
      return 0;
    }
    if (ch < 0x20) {
      j_fail(jp, "control character in string");
      break;
    }
    if (jp->p == jp->end) break;
    ch = (unsigned char)*jp->p++;
    switch (ch) {
    case '"': case '\\': case '/': sb_put(&b, &ch, 1); break;
    case 'b': sb_put(&b, "\b", 1); break;
    case 'f': sb_put(&b, "\f", 1); break;
    case 'n': sb_put(&b, "\n", 1); break;
    case 'r': sb_put(&b, "\r", 1); break;
    case 't': sb_put(&b, "\t", 1); break;
    case 'u': {
      unsigned long cp, lo;
      if (j_hex4(jp, &cp) < 0) goto bad;
      if (cp >= 0xd800 && cp <= 0xdbff && jp->end - jp->p >= 6 && jp->p[0] == '\\' &&
          jp->p[1] == 'u') {
        jparser save = *jp;
        jp->p += 2;
        if (j_hex4(jp, &lo) < 0) goto bad;
        if (lo >= 0xdc00 && lo <= 0xdfff) cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        else *jp = save;
      }
      /* A lone surrogate cannot be UTF-8: it becomes U+FFFD. */
      if (cp >= 0xd800 && cp <= 0xdfff) cp = 0xfffd;
      sb_utf8(&b, cp);
      break;
    }
    default: j_fail(jp, "bad escape"); goto bad;
    }
  }
  j_fail(jp, "unterminated string");
bad:
  sb_free(&b);
  return -1;
}

static int j_value(jparser *jp, jv *v);

/* Parses the elements of an array or the members of an object (jp->p at
 * the opening bracket) into v->kids. */
static int j_list(jparser *jp, jv *v, int obj) {
  size_t cap = 0;
  char close = obj ? '}' : ']';
  if (++jp->depth > JSON_DEPTH) return j_fail(jp, "nested too deep");
  jp->p++;
  j_ws(jp);
  if (jp->p < jp->end && *jp->p == close) {
    jp->p++;
    jp->depth--;
    return 0;
  }
  for (;;) {
    jv *k;
    if (v->n == cap) {
      cap = cap ? cap * 2 : 4;
      v->kids = xrealloc(v->kids, cap * sizeof *v->kids);
    }
    k = &v->kids[v->n++];
    memset(k, 0, sizeof *k);
    j_ws(jp);
    if (obj) {
      if (jp->p == jp->end || *jp->p != '"') return j_fail(jp, "expected a member name");
      if (j_string(jp, &k->key, &k->klen) < 0) return -1;
      j_ws(jp);
      if (jp->p == jp->end || *jp->p != ':') return j_fail(jp, "expected ':'");
      jp->p++;
    }
    if (j_value(jp, k) < 0) return -1;
    j_ws(jp);
    if (jp->p == jp->end) return j_fail(jp, "unterminated array or object");
    if (*jp->p == ',') {
      jp->p++;
      continue;
    }
    if (*jp->p != close) return j_fail(jp, obj ? "expected ',' or '}'" : "expected ',' or ']'");
    jp->p++;
    jp->depth--;
    return 0;
  }
}

static int j_digits(jparser *jp) {
  const char *s = jp->p;
  while (jp->p < jp->end && *jp->p >= '0' && *jp->p <= '9') jp->p++;
  return jp->p > s ? 0 : -1;
}

static int j_number(jparser *jp, jv *v) {
  const char *s = jp->p;
  if (jp->p < jp->end && *jp->p == '-') jp->p++;
  if (jp->p < jp->end && *jp->p == '0') jp->p++;
  else if (j_digits(jp) < 0) return j_fail(jp, "bad number");
  if (jp->p < jp->end && *jp->p == '.') {
    jp->p++;
    if (j_digits(jp) < 0) return j_fail(jp, "bad number");
  }
  if (jp->p < jp->end && (*jp->p == 'e' || *jp->p == 'E')) {
    jp->p++;
    if (jp->p < jp->end && (*jp->p == '+' || *jp->p == '-')) jp->p++;
    if (j_digits(jp) < 0) return j_fail(jp, "bad number");
  }
  v->t = J_NUM;
  v->len = (size_t)(jp->p - s);
  v->s = xrealloc(NULL, v->len + 1);
  memcpy(v->s, s, v->len);
  v->s[v->len] = 0;
  return 0;
}

static int j_word(jparser *jp, const char *w, int t, jv *v) {
  size_t n = strlen(w);
  if ((size_t)(jp->end - jp->p) < n || memcmp(jp->p, w, n) != 0) return j_fail(jp, "unexpected token");
  jp->p += n;
  v->t = t;
  return 0;
}

static int j_value(jparser *jp, jv *v) {
  j_ws(jp);
  if (jp->p == jp->end) return j_fail(jp, "unexpected end");
  switch (*jp->p) {
  case '{': v->t = J_OBJ; return j_list(jp, v, 1);
  case '[': v->t = J_ARR; return j_list(jp, v, 0);
  case '"': v->t = J_STR; return j_string(jp, &v->s, &v->len);
  case 't': return j_word(jp, "true", J_TRUE, v);
  case 'f': return j_word(jp, "false", J_FALSE, v);
  case 'n': return j_word(jp, "null", J_NULL, v);
  default:
    if (*jp->p == '-' || (*jp->p >= '0' && *jp->p <= '9')) return j_number(jp, v);
    return j_fail(jp, "unexpected character");
  }
}

/* Parses the JSON text s[0, n) into *v; returns 0, or -1 with *err set (v is
 * then empty). */
static int json_parse(const char *s, size_t n, jv *v, const char **err) {
  jparser jp;
  memset(v, 0, sizeof *v);
  jp.p = s;
  jp.end = s + n;
  jp.depth = 0;
  jp.err = NULL;
  if (n > JSON_MAX) {
    *err = "JSON text too large";
    return -1;
  }
  if (j_value(&jp, v) == 0) {
    j_ws(&jp);
    if (jp.p == jp.end) return 0;
    j_fail(&jp, "trailing characters");
  }
  jv_free(v);
  *err = jp.err;
  return -1;
}

/* The member key of object o, or NULL. */
static const jv *jv_get(const jv *o, const char *key) {
  size_t i, n = strlen(key);
  if (!o || o->t != J_OBJ) return NULL;
  for (i = 0; i < o->n; i++)
    if (o->kids[i].klen == n && memcmp(o->kids[i].key, key, n) == 0) return &o->kids[i];
  return NULL;
}

/* The text of v when it is a string, else NULL. */
static const char *jv_str(const jv *v) { return v && v->t == J_STR ? v->s : NULL; }

static int jv_is(const jv *v, int t) { return v && v->t == t; }

/* The conversation ------------------------------------------------------- */

enum { D_OPENAI, D_ANTHROPIC, D_PLAIN };
enum { EP_CHAT, EP_MESSAGES, EP_SEARCH, EP_MODELS, EP_N };
static const char *const ep_names[EP_N] = {"chat_completions", "messages", "search", "models"};

/* What the rules see of a chat request. */
typedef struct {
  int dialect;
  const jv *tools;  /* the request's tools array, or NULL */
  sbuf user;        /* the last user message's text */
  sbuf subject;     /* the last user message's or tool result's text */
  int subject_tool; /* the subject is a tool result */
  sbuf results;     /* the tool results after the last assistant message */
  sbuf system;      /* the system prompt's text */
  const char *model;
  const jv *out_schema; /* OpenAI response_format json_schema's schema, or NULL */
  int out_json;         /* the request asks for a JSON answer (json_schema or json_object) */
  const char *forced;   /* the tool the request forces: a name, "" for any tool, or NULL */
} convo;

static void convo_free(convo *cv) {
  sb_free(&cv->system);
  sb_free(&cv->user);
  sb_free(&cv->subject);
  sb_free(&cv->results);
}

/* Appends the text of content (a string, or an array of text parts or
 * blocks) to b. */
static void content_text(sbuf *b, const jv *content) {
  size_t i;
  if (jv_is(content, J_STR)) {
    sb_put(b, content->s, content->len);
    return;
  }
  if (!jv_is(content, J_ARR)) return;
  for (i = 0; i < content->n; i++) {
    const jv *part = &content->kids[i];
    const char *type = jv_str(jv_get(part, "type"));
    const jv *text = jv_get(part, "text");
    if (jv_is(part, J_STR)) sb_put(b, part->s, part->len);
    else if (type && strcmp(type, "text") == 0 && jv_is(text, J_STR)) sb_put(b, text->s, text->len);
  }
}

static void set_text(sbuf *b, const sbuf *from) {
  b->len = 0;
  sb_put(b, from->p ? from->p : "", from->len);
}

/* The length of the longest prefix of s[0, n) of at most max bytes that
 * does not end inside a UTF-8 sequence. */
static size_t utf8_cut(const char *s, size_t n, size_t max) {
  if (n <= max) return n;
  while (max > 0 && ((unsigned char)s[max] & 0xc0) == 0x80) max--;
  return max;
}

static void add_result(convo *cv, const sbuf *text) {
  if (cv->results.len) sb_puts(&cv->results, " | ");
  sb_put(&cv->results, text->p ? text->p : "", utf8_cut(text->p, text->len, RESULT_CUT));
  set_text(&cv->subject, text);
  cv->subject_tool = 1;
}

/* Reads the messages of a chat request into cv; returns NULL, or what is
 * wrong with them. */
static const char *convo_read(convo *cv, const jv *req) {
  const jv *msgs = jv_get(req, "messages");
  size_t i, j;
  if (!jv_is(msgs, J_ARR) || msgs->n == 0) return "messages must be a non-empty array";
  cv->tools = jv_is(jv_get(req, "tools"), J_ARR) ? jv_get(req, "tools") : NULL;
  if (cv->dialect == D_ANTHROPIC) content_text(&cv->system, jv_get(req, "system"));
  for (i = 0; i < msgs->n; i++) {
    const jv *m = &msgs->kids[i], *content = jv_get(m, "content");
    const char *role = jv_str(jv_get(m, "role"));
    sbuf t = {0};
    int had_result = 0;
    if (!role) return "every message needs a role";
    if (strcmp(role, "system") == 0 || strcmp(role, "developer") == 0) {
      if (cv->system.len) sb_puts(&cv->system, "\n\n");
      content_text(&cv->system, content);
      continue;
    }
    if (strcmp(role, "assistant") == 0) {
      cv->results.len = 0;
      continue;
    }
    if (cv->dialect == D_OPENAI && strcmp(role, "tool") == 0) {
      content_text(&t, content);
      add_result(cv, &t);
    } else if (strcmp(role, "user") == 0) {
      if (cv->dialect == D_ANTHROPIC && jv_is(content, J_ARR)) {
        for (j = 0; j < content->n; j++) {
          const jv *blk = &content->kids[j];
          const char *type = jv_str(jv_get(blk, "type"));
          if (type && strcmp(type, "tool_result") == 0) {
            t.len = 0;
            content_text(&t, jv_get(blk, "content"));
            add_result(cv, &t);
            had_result = 1;
          }
        }
        t.len = 0;
      }
      if (!had_result) {
        content_text(&t, content);
        set_text(&cv->user, &t);
        set_text(&cv->subject, &t);
        cv->subject_tool = 0;
      }
    }
    sb_free(&t);
  }
  return NULL;
}

/* The name of the request's i-th tool, or NULL. */
static const char *tool_name(const convo *cv, size_t i) {
  const jv *t;
  if (!cv->tools || i >= cv->tools->n) return NULL;
  t = &cv->tools->kids[i];
  return cv->dialect == D_OPENAI ? jv_str(jv_get(jv_get(t, "function"), "name"))
                                 : jv_str(jv_get(t, "name"));
}

/* Whether the request offers a tool named name (a request without tools
 * offers none). */
static int tool_offered(const convo *cv, const char *name) {
  size_t i;
  for (i = 0; cv->tools && i < cv->tools->n; i++) {
    const char *n = tool_name(cv, i);
    if (n && strcmp(n, name) == 0) return 1;
  }
  return 0;
}

/* The JSON Schema of the offered tool called name, or NULL. */
static const jv *tool_schema(const convo *cv, const char *name) {
  size_t i;
  for (i = 0; cv->tools && i < cv->tools->n; i++) {
    const char *n = tool_name(cv, i);
    const jv *t = &cv->tools->kids[i];
    if (n && strcmp(n, name) == 0)
      return cv->dialect == D_OPENAI ? jv_get(jv_get(t, "function"), "parameters") : jv_get(t, "input_schema");
  }
  return NULL;
}

/* Reads what a request asks of the answer's form: a JSON answer (OpenAI
 * response_format) or a forced tool (tool_choice). */
static void convo_form(convo *cv, const jv *req) {
  const jv *rf = jv_get(req, "response_format"), *tc = jv_get(req, "tool_choice");
  const char *rft = jv_str(jv_get(rf, "type")), *type;
  if (cv->dialect == D_OPENAI && rft) {
    if (strcmp(rft, "json_schema") == 0) {
      cv->out_json = 1;
      cv->out_schema = jv_get(jv_get(rf, "json_schema"), "schema");
    } else if (strcmp(rft, "json_object") == 0) {
      cv->out_json = 1;
    }
  }
  if (!cv->tools) return;
  if (cv->dialect == D_OPENAI) {
    if (jv_str(tc) && strcmp(tc->s, "required") == 0) cv->forced = "";
    else if (jv_is(tc, J_OBJ)) cv->forced = jv_str(jv_get(jv_get(tc, "function"), "name"));
  } else if (jv_is(tc, J_OBJ) && (type = jv_str(jv_get(tc, "type"))) != NULL) {
    if (strcmp(type, "any") == 0) cv->forced = "";
    else if (strcmp(type, "tool") == 0) cv->forced = jv_str(jv_get(tc, "name"));
  }
  if (cv->forced && *cv->forced && !tool_offered(cv, cv->forced)) cv->forced = NULL;
}

/* Templates and JSON out ------------------------------------------------ */

/* Appends the first bytes of v (at most cut, on a UTF-8 boundary). */
static void put_cut(sbuf *b, const char *v, size_t n, size_t cut) {
  sb_put(b, v ? v : "", v ? utf8_cut(v, n, cut) : 0);
}

/* Appends s[0, n) with {{user}}, {{subject}}, {{tool_results}} and
 * {{model}} replaced by their values, each cut to cut bytes; other text,
 * unknown names included, is kept. */
static void expand(sbuf *b, const char *s, size_t n, const convo *cv, size_t cut) {
  static const char *const names[] = {"{{user}}", "{{subject}}", "{{tool_results}}", "{{model}}"};
  size_t i = 0, k;
  while (i < n) {
    const char *o = memchr(s + i, '{', n - i);
    size_t at = o ? (size_t)(o - s) : n;
    sb_put(b, s + i, at - i);
    i = at;
    if (i == n) break;
    for (k = 0; k < 4; k++) {
      size_t len = strlen(names[k]);
      if (n - i >= len && memcmp(s + i, names[k], len) == 0) break;
    }
    if (k == 4) {
      sb_put(b, "{", 1);
      i++;
      continue;
    }
    if (k == 0) put_cut(b, cv->user.p, cv->user.len, cut);
    else if (k == 1) put_cut(b, cv->subject.p, cv->subject.len, cut);
    else if (k == 2) put_cut(b, cv->results.p, cv->results.len, cut);
    else put_cut(b, cv->model, strlen(cv->model), cut);
    i += strlen(names[k]);
  }
}

/* Appends v as compact JSON, expanding templates in strings (their values
 * cut to ARG_CUT bytes) when cv is given. */
static void jv_write(sbuf *b, const jv *v, const convo *cv) {
  size_t i;
  switch (v->t) {
  case J_NULL: sb_puts(b, "null"); break;
  case J_FALSE: sb_puts(b, "false"); break;
  case J_TRUE: sb_puts(b, "true"); break;
  case J_NUM: sb_put(b, v->s, v->len); break;
  case J_STR:
    if (cv) {
      sbuf t = {0};
      expand(&t, v->s, v->len, cv, ARG_CUT);
      sb_json(b, t.p ? t.p : "", t.len);
      sb_free(&t);
    } else {
      sb_json(b, v->s, v->len);
    }
    break;
  default:
    sb_puts(b, v->t == J_ARR ? "[" : "{");
    for (i = 0; i < v->n; i++) {
      if (i) sb_puts(b, ",");
      if (v->t == J_OBJ) {
        sb_json(b, v->kids[i].key, v->kids[i].klen);
        sb_puts(b, ":");
      }
      jv_write(b, &v->kids[i], cv);
    }
    sb_puts(b, v->t == J_ARR ? "]" : "}");
  }
}

/* The number a schema keyword holds, or dflt. */
static double schema_num(const jv *s, const char *key, double dflt, int *given) {
  const jv *v = jv_get(s, key);
  if (!jv_is(v, J_NUM)) return dflt;
  if (given) *given = 1;
  return strtod(v->s, NULL);
}

/* Appends a value that fits schema s, as compact JSON: its const, its first
 * enum value or first alternative; for a type, the smallest value that its
 * bounds allow (strings: the subject's text cut to maxLength and padded to
 * minLength; arrays: minItems items, at least one; objects: every property).
 * What a rule does not give, the mock answers with this. */
static void gen_value(sbuf *b, const jv *s, const convo *cv, int depth) {
  const jv *t, *c;
  const char *type = NULL;
  size_t i;
  if (depth > 16 || !jv_is(s, J_OBJ)) {
    sb_puts(b, "null");
    return;
  }
  if ((c = jv_get(s, "const")) != NULL) {
    jv_write(b, c, NULL);
    return;
  }
  if (jv_is((c = jv_get(s, "enum")), J_ARR) && c->n) {
    jv_write(b, &c->kids[0], NULL);
    return;
  }
  if ((jv_is((c = jv_get(s, "anyOf")), J_ARR) || jv_is((c = jv_get(s, "oneOf")), J_ARR)) && c->n) {
    gen_value(b, &c->kids[0], cv, depth + 1);
    return;
  }
  t = jv_get(s, "type");
  if (jv_is(t, J_STR)) type = t->s;
  for (i = 0; !type && jv_is(t, J_ARR) && i < t->n; i++)
    if (jv_is(&t->kids[i], J_STR) && strcmp(t->kids[i].s, "null")) type = t->kids[i].s;
  if (!type) type = jv_get(s, "properties") ? "object" : "string";
  if (strcmp(type, "object") == 0) {
    const jv *props = jv_get(s, "properties");
    sb_puts(b, "{");
    for (i = 0; jv_is(props, J_OBJ) && i < props->n; i++) {
      if (i) sb_puts(b, ",");
      sb_json(b, props->kids[i].key, props->kids[i].klen);
      sb_puts(b, ":");
      gen_value(b, &props->kids[i], cv, depth + 1);
    }
    sb_puts(b, "}");
  } else if (strcmp(type, "array") == 0) {
    double n = schema_num(s, "minItems", 1, NULL);
    size_t k, count = n < 1 ? 1 : n > 8 ? 8 : (size_t)n;
    sb_puts(b, "[");
    for (k = 0; k < count; k++) {
      if (k) sb_puts(b, ",");
      gen_value(b, jv_get(s, "items"), cv, depth + 1);
    }
    sb_puts(b, "]");
  } else if (strcmp(type, "integer") == 0 || strcmp(type, "number") == 0) {
    int lo_given = 0, ex_given = 0, hi_given = 0;
    double lo = schema_num(s, "minimum", 1, &lo_given);
    double ex = schema_num(s, "exclusiveMinimum", 0, &ex_given);
    double hi = schema_num(s, "maximum", 0, &hi_given);
    double x = lo_given ? lo : ex_given ? ex + 1 : 1;
    if (hi_given && x > hi) x = hi;
    if (strcmp(type, "integer") == 0) sb_printf(b, "%lld", (long long)(x < 0 ? x - 0.5 : x + 0.5));
    else sb_printf(b, "%.17g", x);
  } else if (strcmp(type, "boolean") == 0) {
    sb_puts(b, "true");
  } else if (strcmp(type, "null") == 0) {
    sb_puts(b, "null");
  } else {
    double maxl = schema_num(s, "maxLength", 80, NULL), minl = schema_num(s, "minLength", 0, NULL);
    size_t max = maxl < 0 ? 0 : (size_t)maxl, min = minl < 0 ? 0 : (size_t)minl;
    sbuf t2 = {0};
    size_t len;
    sb_put(&t2, cv->subject.p ? cv->subject.p : "", cv->subject.p ? utf8_cut(cv->subject.p, cv->subject.len, max) : 0);
    for (len = t2.p ? strlen(t2.p) : 0; len < min; len++) sb_puts(&t2, "x");
    sb_json(b, t2.p ? t2.p : "", t2.len);
    sb_free(&t2);
  }
}

/* Rules ----------------------------------------------------------------- */

static const char default_rules[] =
    "{\"rules\":["
    /* The support team of scripts/examples/support_team.lua: a triage agent
     * and two specialists, told apart by their system prompts. */
    "{\"system\":\"triage agent\",\"when\":\"user\",\"match\":[\"invoice\",\"refund\",\"charge\","
    "\"billing\",\"payment\"],\"tool_calls\":[{\"name\":\"transfer_to_billing\"}]},"
    "{\"system\":\"triage agent\",\"when\":\"user\",\"match\":[\"crash\",\"error\",\"bug\",\"slow\","
    "\"latency\",\"outage\"],\"tool_calls\":[{\"name\":\"transfer_to_tech\"}]},"
    "{\"system\":\"triage agent\",\"reply\":\"I route questions to billing or technical support. "
    "Tell me about an invoice, a refund, a crash or an error.\"},"
    "{\"system\":\"billing specialist\",\"when\":\"tool\",\"match\":\"Transferred to\","
    "\"tool_calls\":[{\"name\":\"lookup_invoice\",\"arguments\":{\"query\":\"{{user}}\"}}]},"
    "{\"system\":\"billing specialist\",\"when\":\"tool\",\"reply\":\"Billing: {{tool_results}}. I have "
    "asked for the refund; it reaches your account in 3 to 5 days.\"},"
    "{\"system\":\"billing specialist\",\"reply\":\"Billing: about {{user}}, I can look up invoices "
    "and refunds.\"},"
    "{\"system\":\"tech specialist\",\"when\":\"tool\",\"match\":\"Transferred to\","
    "\"tool_calls\":[{\"name\":\"metrics\",\"arguments\":{}}]},"
    "{\"system\":\"tech specialist\",\"when\":\"tool\",\"reply\":\"Tech: the host says {{tool_results}}. "
    "Nothing is failing now; send the crash log and I will look at it.\"},"
    "{\"system\":\"tech specialist\",\"reply\":\"Tech: about {{user}}, send me the error you see.\"},"
    "{\"when\":\"tool\",\"reply\":\"Here is what I found: {{tool_results}}\\nBased on these "
    "results, the most likely cause is the latest deploy; I suggest rolling it back and "
    "watching p99 latency.\"},"
    "{\"when\":\"user\",\"all\":[[\"latency\",\"slow\",\"performance\",\"anomal\",\"error\","
    "\"spike\",\"p99\",\"timeout\",\"outage\",\"cpu\",\"memory\",\"degrad\"],"
    "[\"before\",\"previous\",\"earlier\",\"last time\",\"again\"]],"
    "\"tool_calls\":[{\"name\":\"metrics\",\"arguments\":{}},"
    "{\"name\":\"web_search\",\"arguments\":{\"query\":\"{{user}}\"}},"
    "{\"name\":\"memory_recall\",\"arguments\":{\"query\":\"{{user}}\"}}]},"
    "{\"when\":\"user\",\"match\":[\"latency\",\"slow\",\"performance\",\"anomal\",\"error\","
    "\"spike\",\"p99\",\"timeout\",\"outage\",\"cpu\",\"memory\",\"degrad\"],"
    "\"tool_calls\":[{\"name\":\"metrics\",\"arguments\":{}},"
    "{\"name\":\"web_search\",\"arguments\":{\"query\":\"{{user}}\"}}]},"
    "{\"when\":\"user\",\"match\":[\"hello\",\"hey\",\"good morning\"],\"reply\":\"Hello! I am "
    "the ops assistant. Ask me about latency, errors or anomalies in your services.\"},"
    "{\"reply\":\"I can look into latency, errors and anomalies in your services. Tell me "
    "which one to check.\"}"
    "]}";

static const char no_rule_reply[] = "I am a mock model and have no rule for that.";

/* Whether v is a string, or a non-empty array of strings. */
static int words_ok(const jv *v) {
  size_t i;
  if (jv_is(v, J_STR)) return 1;
  if (!jv_is(v, J_ARR) || v->n == 0) return 0;
  for (i = 0; i < v->n; i++)
    if (v->kids[i].t != J_STR) return 0;
  return 1;
}

/* Checks a parsed rules document; returns NULL, or what is wrong. */
static const char *rules_check(const jv *doc, char *why, size_t whylen) {
  const jv *rules = jv_get(doc, "rules");
  size_t i, j;
  if (!jv_is(doc, J_OBJ) || !jv_is(rules, J_ARR)) return "the top level must be {\"rules\": [...]}";
  for (i = 0; i < rules->n; i++) {
    const jv *r = &rules->kids[i];
    const jv *when, *all, *calls;
    const char *bad = NULL;
    if (!jv_is(r, J_OBJ)) bad = "is not an object";
    for (j = 0; !bad && j < r->n; j++) {
      const char *k = r->kids[j].key;
      if (strcmp(k, "when") && strcmp(k, "match") && strcmp(k, "all") && strcmp(k, "reply") &&
          strcmp(k, "tool_calls") && strcmp(k, "system") && strcmp(k, "json"))
        bad = "has an unknown key";
    }
    when = jv_get(r, "when");
    all = jv_get(r, "all");
    calls = jv_get(r, "tool_calls");
    if (!bad && when &&
        (!jv_str(when) || (strcmp(when->s, "user") && strcmp(when->s, "tool") && strcmp(when->s, "any"))))
      bad = "has a \"when\" other than \"user\", \"tool\" or \"any\"";
    if (!bad && jv_get(r, "match") && !words_ok(jv_get(r, "match")))
      bad = "has a \"match\" that is not a string or a non-empty array of strings";
    if (!bad && all) {
      if (!jv_is(all, J_ARR)) bad = "has an \"all\" that is not an array";
      for (j = 0; !bad && j < all->n; j++)
        if (!words_ok(&all->kids[j])) bad = "has an \"all\" element that is not a string or an array of strings";
    }
    if (!bad && jv_get(r, "reply") && !jv_str(jv_get(r, "reply"))) bad = "has a \"reply\" that is not a string";
    if (!bad && calls) {
      if (!jv_is(calls, J_ARR) || calls->n == 0) bad = "has a \"tool_calls\" that is not a non-empty array";
      for (j = 0; !bad && j < calls->n; j++) {
        const jv *c = &calls->kids[j], *args = jv_get(c, "arguments");
        if (!jv_str(jv_get(c, "name"))) bad = "has a tool call without a string \"name\"";
        else if (args && !jv_is(args, J_OBJ)) bad = "has a tool call whose \"arguments\" is not an object";
      }
    }
    if (!bad && jv_get(r, "system") && !words_ok(jv_get(r, "system")))
      bad = "has a \"system\" that is not a string or a non-empty array of strings";
    if (!bad && !jv_get(r, "reply") && !calls && !jv_get(r, "json"))
      bad = "has none of \"reply\", \"tool_calls\" and \"json\"";
    if (bad) {
      snprintf(why, whylen, "rule %zu %s", i + 1, bad);
      return why;
    }
  }
  return NULL;
}

/* Whether needle occurs in hay, ignoring ASCII case. */
static int icontains(const sbuf *hay, const char *needle, size_t n) {
  size_t i;
  if (n == 0) return 1;
  for (i = 0; i + n <= hay->len; i++)
    if (ieqn(hay->p + i, needle, n)) return 1;
  return 0;
}

static int words_match(const jv *w, const sbuf *text) {
  size_t i;
  if (w->t == J_STR) return icontains(text, w->s, w->len);
  for (i = 0; i < w->n; i++)
    if (icontains(text, w->kids[i].s, w->kids[i].len)) return 1;
  return 0;
}

static int rule_matches(const jv *r, const convo *cv) {
  const char *when = jv_str(jv_get(r, "when"));
  const jv *match = jv_get(r, "match"), *all = jv_get(r, "all"), *sys = jv_get(r, "system");
  size_t i;
  if (sys && !words_match(sys, &cv->system)) return 0;
  if (when && strcmp(when, "user") == 0 && cv->subject_tool) return 0;
  if (when && strcmp(when, "tool") == 0 && !cv->subject_tool) return 0;
  if (match && !words_match(match, &cv->subject)) return 0;
  for (i = 0; all && i < all->n; i++)
    if (!words_match(&all->kids[i], &cv->subject)) return 0;
  return 1;
}

static struct {
  jv doc; /* the rules in force, checked */
  int loaded;
} R;

static int rules_load(const char *text, size_t len, const char *from) {
  const char *err = NULL;
  char why[160];
  jv doc;
  if (json_parse(text, len, &doc, &err) < 0) {
    fprintf(stderr, "mockllm: %s: invalid JSON: %s\n", from, err);
    return -1;
  }
  if ((err = rules_check(&doc, why, sizeof why)) != NULL) {
    fprintf(stderr, "mockllm: %s: %s\n", from, err);
    jv_free(&doc);
    return -1;
  }
  jv_free(&R.doc);
  R.doc = doc;
  R.loaded = 1;
  return 0;
}

static int rules_load_file(const char *path) {
  FILE *f = fopen(path, "rb");
  sbuf b = {0};
  char buf[8192];
  size_t n;
  int r;
  if (!f) {
    fprintf(stderr, "mockllm: %s: %s\n", path, strerror(errno));
    return -1;
  }
  while ((n = fread(buf, 1, sizeof buf, f)) > 0 && b.len <= JSON_MAX) sb_put(&b, buf, n);
  fclose(f);
  r = rules_load(b.p ? b.p : "", b.len, path);
  sb_free(&b);
  return r;
}

/* Replies --------------------------------------------------------------- */

enum { F_STOP, F_TOOLS, F_LENGTH };

typedef struct {
  char *name;
  sbuf args; /* the arguments as JSON text */
  char id[40];
} call;

typedef struct {
  sbuf text;
  call *calls;
  size_t ncalls;
  int finish;
  int bad_args;
  unsigned long long in_tok, out_tok;
} reply;

static void reply_free(reply *rp) {
  size_t i;
  sb_free(&rp->text);
  for (i = 0; i < rp->ncalls; i++) {
    free(rp->calls[i].name);
    sb_free(&rp->calls[i].args);
  }
  free(rp->calls);
}

enum { K_NONE, K_429, K_500, K_529, K_MIDSTREAM, K_RESET, K_MALFORMED, K_SLOW, K_BAD_ARGS,
       K_401, K_N };
static const char *const kind_names[K_N] = {"",      "429",       "500",  "529",      "midstream",
                                            "reset", "malformed", "slow", "bad_args", "401"};

/* The server's options and counters. */
static struct {
  unsigned long long requests[EP_N], total, streams, in_flight, max_in_flight;
  unsigned long long faults[K_N], faults_total;
  unsigned long long ids; /* the last number given to an id */
  uint64_t chunk, delay_ms, first_byte_ms;
  const char *api_key, *model;
  sbuf last;          /* the last chat request, as /echo gives it */
  struct seen *seen;  /* x-mock-fault values with times=N */
} M = {.chunk = 16, .model = "mock-1"};

static call *add_call(reply *rp, const char *name, int dialect) {
  call *c;
  rp->calls = xrealloc(rp->calls, (rp->ncalls + 1) * sizeof *rp->calls);
  c = &rp->calls[rp->ncalls++];
  memset(c, 0, sizeof *c);
  c->name = xrealloc(NULL, strlen(name) + 1);
  strcpy(c->name, name);
  snprintf(c->id, sizeof c->id, dialect == D_ANTHROPIC ? "toolu_mock%06llu" : "call_mock%06llu",
           ++M.ids);
  return c;
}

/* Fills rp from the first rule that matches the conversation, then shapes
 * it as the request asks: a forced tool gets a call to it (the rule's
 * calls to it, else its "json", else a value generated from the tool's
 * schema); a JSON answer (response_format) is the rule's "json" or a
 * value generated from the schema. */
static void reply_make(reply *rp, const convo *cv) {
  const jv *rules = jv_get(&R.doc, "rules"), *json = NULL;
  size_t i, j;
  int found = 0;
  for (i = 0; i < rules->n && !found; i++) {
    const jv *r = &rules->kids[i], *calls = jv_get(r, "tool_calls");
    const char *text = jv_str(jv_get(r, "reply"));
    if (!rule_matches(r, cv)) continue;
    for (j = 0; calls && j < calls->n; j++) {
      const jv *c = &calls->kids[j], *args = jv_get(c, "arguments");
      const char *name = jv_str(jv_get(c, "name"));
      call *k;
      if (!tool_offered(cv, name)) continue;
      if (cv->forced && *cv->forced && strcmp(name, cv->forced)) continue;
      k = add_call(rp, name, cv->dialect);
      if (args) jv_write(&k->args, args, cv);
      else sb_puts(&k->args, "{}");
    }
    json = jv_get(r, "json");
    if (!text && rp->ncalls == 0 && !json) continue;
    if (text) expand(&rp->text, text, strlen(text), cv, (size_t)-1);
    found = 1;
  }
  if (!found) sb_puts(&rp->text, no_rule_reply);
  if (cv->forced && rp->ncalls == 0) {
    const char *name = *cv->forced ? cv->forced
                       : tool_offered(cv, "final_answer") ? "final_answer" : tool_name(cv, 0);
    call *k = add_call(rp, name ? name : "final_answer", cv->dialect);
    if (json) jv_write(&k->args, json, cv);
    else gen_value(&k->args, tool_schema(cv, k->name), cv, 0);
    rp->text.len = 0;
  } else if (cv->out_json && rp->ncalls == 0) {
    rp->text.len = 0;
    if (json) jv_write(&rp->text, json, cv);
    else if (cv->out_schema) gen_value(&rp->text, cv->out_schema, cv, 0);
    else sb_puts(&rp->text, "{}");
  } else if (json && rp->ncalls == 0 && rp->text.len == 0) {
    jv_write(&rp->text, json, cv);
  }
}

/* Turns the calls' arguments into text that is not JSON: the first half,
 * cut on a UTF-8 boundary, of what they would have been.  A reply without
 * calls gets one, to the matched tool or the first offered (or "metrics"). */
static void reply_break_args(reply *rp, const convo *cv) {
  size_t i;
  if (rp->ncalls == 0) {
    const char *name = tool_name(cv, 0);
    call *k = add_call(rp, name ? name : "metrics", cv->dialect);
    sb_puts(&k->args, "{\"query\":");
    sb_json(&k->args, cv->subject.p ? cv->subject.p : "", cv->subject.len);
    sb_puts(&k->args, "}");
  }
  for (i = 0; i < rp->ncalls; i++) {
    sbuf *a = &rp->calls[i].args;
    a->len = utf8_cut(a->p, a->len, a->len / 2 ? a->len / 2 : 1);
    a->p[a->len] = 0;
  }
  rp->bad_args = 1;
}

static unsigned long long tokens(size_t bytes) { return bytes / 4 ? bytes / 4 : 1; }

/* Sets the finish reason and token counts; cuts the reply to max_tokens
 * (when given, and exceeded). */
static void reply_finish(reply *rp, size_t req_bytes, long long max_tokens) {
  size_t i, out = rp->text.len;
  for (i = 0; i < rp->ncalls; i++) out += rp->calls[i].args.len;
  rp->in_tok = tokens(req_bytes);
  rp->out_tok = tokens(out);
  rp->finish = rp->ncalls ? F_TOOLS : F_STOP;
  if (max_tokens >= 0 && rp->out_tok > (unsigned long long)max_tokens) {
    size_t keep = (size_t)max_tokens * 4 < rp->text.len ? (size_t)max_tokens * 4 : rp->text.len;
    rp->text.len = utf8_cut(rp->text.p, rp->text.len, keep);
    if (rp->text.p) rp->text.p[rp->text.len] = 0;
    for (i = 0; i < rp->ncalls; i++) {
      free(rp->calls[i].name);
      sb_free(&rp->calls[i].args);
    }
    rp->ncalls = 0;
    rp->finish = F_LENGTH;
    rp->out_tok = tokens(rp->text.len);
  }
}

/* Responses of the mock's routes ------------------------------------------ */

/* A response being made, attached to the request as c->r.ext: a whole body,
 * or the events of a stream (is_delta marks the content deltas, which
 * faults count).  Owned by the request; ext_clear frees it. */
typedef struct {
  int counted;   /* counts in M.in_flight */
  int status;
  const char *ctype;
  sbuf body, extra; /* extra: further header lines */
  int stream;
  sbuf *ev;
  unsigned char *is_delta;
  size_t nev, next;
  uint64_t delay_ms;
  int reset; /* end with a TCP reset instead of the end of the body */
  int started;
} mreq;

static void ext_clear(conn *c) {
  mreq *m = c->r.ext;
  size_t i;
  if (!m) return;
  if (m->counted) M.in_flight--;
  sb_free(&m->body);
  sb_free(&m->extra);
  for (i = 0; i < m->nev; i++) sb_free(&m->ev[i]);
  free(m->ev);
  free(m->is_delta);
  free(m);
  c->r.ext = NULL;
}

static mreq *mreq_of(conn *c) {
  if (!c->r.ext) {
    mreq *m = xrealloc(NULL, sizeof *m);
    memset(m, 0, sizeof *m);
    c->r.ext = m;
  }
  return c->r.ext;
}

/* Starts a new event of the stream and returns it to be filled. */
static sbuf *ev_add(mreq *m, int delta) {
  m->ev = xrealloc(m->ev, (m->nev + 1) * sizeof *m->ev);
  m->is_delta = xrealloc(m->is_delta, m->nev + 1);
  memset(&m->ev[m->nev], 0, sizeof *m->ev);
  m->is_delta[m->nev] = (unsigned char)delta;
  return &m->ev[m->nev++];
}

/* Inserts the string s as an event before event i. */
static void ev_insert(mreq *m, size_t i, const char *s) {
  sbuf *e = ev_add(m, 0), t = *e;
  memmove(&m->ev[i + 1], &m->ev[i], (m->nev - 1 - i) * sizeof *m->ev);
  memmove(&m->is_delta[i + 1], &m->is_delta[i], m->nev - 1 - i);
  m->ev[i] = t;
  m->is_delta[i] = 0;
  sb_puts(&m->ev[i], s);
}

/* Drops the events from i on. */
static void ev_cut(mreq *m, size_t i) {
  while (m->nev > i) sb_free(&m->ev[--m->nev]);
}

/* The index just past the k-th delta (past the last when there are fewer). */
static size_t ev_after_deltas(const mreq *m, uint64_t k) {
  size_t i, last = 0;
  uint64_t seen = 0;
  if (k == 0) {
    for (i = 0; i < m->nev && !m->is_delta[i]; i++) {
    }
    return i;
  }
  for (i = 0; i < m->nev; i++) {
    if (!m->is_delta[i]) continue;
    last = i + 1;
    if (++seen == k) break;
  }
  return last;
}

/* Writes the next events of a stream: all of them when there is no delay,
 * else one now and the next after delay_ms. */
static void stream_step(conn *c) {
  mreq *m = c->r.ext;
  sbuf b = {0};
  if (!m->started) {
    m->started = 1;
    c->r.ticker = TICK_SSE;
    stream_head(c, &b, "text/event-stream");
  }
  while (m->next < m->nev) {
    frame(c, &b, m->ev[m->next].p, m->ev[m->next].len);
    m->next++;
    if (m->delay_ms) break;
  }
  if (m->next < m->nev) {
    if (emit(c, b.p, b.len, NULL, 0, NULL) == 0) {
      c->on_timer = stream_step;
      uv_timer_start(&c->timer, on_timer, m->delay_ms, 0);
    }
  } else if (m->reset) {
    c->r.reset_at_end = 1;
    c->r.body_done = 1;
    emit(c, b.p, b.len, NULL, 0, NULL);
  } else {
    send_last(c, &b);
  }
}

/* Writes a whole response, or its head and the first half of its body
 * followed by a reset. */
static void whole_send(conn *c) {
  mreq *m = c->r.ext;
  sbuf b = {0};
  if (!m->reset) {
    respond(c, m->status, m->ctype, m->body.p ? m->body.p : "", m->body.len,
            m->extra.len ? m->extra.p : NULL);
    return;
  }
  head_start(&b, m->status);
  sb_printf(&b, "content-type: %s\r\ncontent-length: %zu\r\n", m->ctype, m->body.len);
  if (m->extra.len) sb_puts(&b, m->extra.p);
  head_end(c, &b);
  sb_put(&b, m->body.p ? m->body.p : "", m->body.len / 2);
  c->r.reset_at_end = 1;
  c->r.body_done = 1;
  emit(c, b.p, b.len, NULL, 0, NULL);
}

/* Sends the response in c->r.ext after ms (at once for 0). */
static void deliver(conn *c, uint64_t ms) {
  mreq *m = c->r.ext;
  void (*go)(conn *) = m->stream ? stream_step : whole_send;
  if (ms == 0) {
    go(c);
    return;
  }
  c->on_timer = go;
  uv_timer_start(&c->timer, on_timer, ms, 0);
}

/* Sets up a whole JSON response with body (taken over). */
static void whole(conn *c, int status, sbuf *body) {
  mreq *m = mreq_of(c);
  m->status = status;
  m->ctype = "application/json";
  sb_free(&m->body);
  m->body = *body;
  memset(body, 0, sizeof *body);
}

/* Faults ---------------------------------------------------------------- */


/* How many requests carried one x-mock-fault value with times=N. */
struct seen {
  struct seen *next;
  uint64_t count;
  char value[1];
};

typedef struct {
  int kind;
  int has_retry_after, has_retry_after_ms, should_retry; /* should_retry: -1 unset */
  uint64_t retry_after, retry_after_ms, after, ms;
  int has_after;
} fault;

/* Calls fn for each "key=value" (or bare word) in a header value separated
 * by ";" or ","; stops at and returns fn's first non-zero result. */
static int each_param(const char *v, int (*fn)(void *, const char *, size_t, const char *, size_t),
                      void *ud) {
  while (*v) {
    const char *e, *eq, *k, *val;
    size_t klen, vlen;
    int r;
    while (*v == ' ' || *v == '\t' || *v == ';' || *v == ',') v++;
    if (!*v) break;
    for (e = v; *e && *e != ';' && *e != ','; e++) {
    }
    eq = memchr(v, '=', (size_t)(e - v));
    k = v;
    klen = (size_t)((eq ? eq : e) - v);
    val = eq ? eq + 1 : e;
    vlen = (size_t)(e - val);
    while (klen && (k[klen - 1] == ' ' || k[klen - 1] == '\t')) klen--;
    while (vlen && (*val == ' ' || *val == '\t')) val++, vlen--;
    while (vlen && (val[vlen - 1] == ' ' || val[vlen - 1] == '\t')) vlen--;
    if ((r = fn(ud, k, klen, val, vlen)) != 0) return r;
    v = e;
  }
  return 0;
}

static int key_is(const char *k, size_t klen, const char *name) {
  return klen == strlen(name) && memcmp(k, name, klen) == 0;
}

typedef struct {
  fault *f;
  uint64_t times;
  int has_times, first;
} fault_parse;

static int fault_param(void *ud, const char *k, size_t klen, const char *v, size_t vlen) {
  fault_parse *fp = ud;
  fault *f = fp->f;
  int i;
  if (fp->first) {
    fp->first = 0;
    for (i = 1; i < K_N; i++)
      if (vlen == 0 && key_is(k, klen, kind_names[i])) f->kind = i;
    return f->kind == K_NONE ? -1 : 0;
  }
  if (key_is(k, klen, "times")) {
    fp->has_times = 1;
    return parse_num(v, vlen, NUM_MAX, &fp->times);
  }
  if (key_is(k, klen, "retry_after")) {
    f->has_retry_after = 1;
    return parse_num(v, vlen, 86400, &f->retry_after);
  }
  if (key_is(k, klen, "retry_after_ms")) {
    f->has_retry_after_ms = 1;
    return parse_num(v, vlen, 86400000, &f->retry_after_ms);
  }
  if (key_is(k, klen, "after")) {
    f->has_after = 1;
    return parse_num(v, vlen, 1000000, &f->after);
  }
  if (key_is(k, klen, "ms")) return parse_num(v, vlen, 86400000, &f->ms);
  if (key_is(k, klen, "should_retry")) {
    if (key_is(v, vlen, "true")) f->should_retry = 1;
    else if (key_is(v, vlen, "false")) f->should_retry = 0;
    else return -1;
    return 0;
  }
  return -1;
}

/* The value of the request's header name (lowercase), or NULL. */
static const char *header_get(conn *c, const char *name) {
  size_t i;
  for (i = 0; i < c->r.nhdrs; i++)
    if (strcmp(c->r.hdrs[i].name, name) == 0) return c->r.hdrs[i].value;
  return NULL;
}

/* Reads x-mock-fault into *f (kind K_NONE when there is none, or when its
 * times are used up).  Returns 0, or -1 when the header is malformed. */
static int fault_read(conn *c, fault *f) {
  const char *v = header_get(c, "x-mock-fault");
  fault_parse fp;
  struct seen *s;
  memset(f, 0, sizeof *f);
  f->should_retry = -1;
  f->ms = 2000;
  f->after = 2;
  if (!v || !*v) return 0;
  fp.f = f;
  fp.times = 0;
  fp.has_times = 0;
  fp.first = 1;
  if (each_param(v, fault_param, &fp) != 0 || f->kind == K_NONE) return -1;
  if (!fp.has_times) return 0;
  for (s = M.seen; s && strcmp(s->value, v) != 0; s = s->next) {
  }
  if (!s) {
    s = xrealloc(NULL, sizeof *s + strlen(v));
    strcpy(s->value, v);
    s->count = 0;
    s->next = M.seen;
    M.seen = s;
  }
  if (++s->count > fp.times) f->kind = K_NONE;
  return 0;
}

static int stream_param(void *ud, const char *k, size_t klen, const char *v, size_t vlen) {
  uint64_t *p = ud; /* chunk, delay_ms, first_byte_ms */
  if (key_is(k, klen, "chunk")) return parse_num(v, vlen, 1u << 20, &p[0]) < 0 || p[0] == 0 ? -1 : 0;
  if (key_is(k, klen, "delay_ms")) return parse_num(v, vlen, 86400000, &p[1]);
  if (key_is(k, klen, "first_byte_ms")) return parse_num(v, vlen, 86400000, &p[2]);
  return -1;
}

/* Sets up an error response in the dialect: the body and the retry headers
 * the fault asks for. */
static void error_reply(conn *c, int dialect, int status, const char *type, const char *code,
                        const char *message, const fault *f) {
  mreq *m = mreq_of(c);
  sbuf b = {0};
  if (dialect == D_ANTHROPIC) {
    sb_puts(&b, "{\"type\":\"error\",\"error\":{\"type\":");
    sb_json(&b, type, strlen(type));
    sb_puts(&b, ",\"message\":");
    sb_json(&b, message, strlen(message));
    sb_puts(&b, "}}");
    sb_printf(&m->extra, "request-id: req_mock%06llu\r\n", ++M.ids);
  } else {
    sb_puts(&b, "{\"error\":{\"message\":");
    sb_json(&b, message, strlen(message));
    sb_puts(&b, ",\"type\":");
    sb_json(&b, type, strlen(type));
    sb_puts(&b, ",\"param\":null,\"code\":");
    if (code) sb_json(&b, code, strlen(code));
    else sb_puts(&b, "null");
    sb_puts(&b, "}}");
    sb_printf(&m->extra, "x-request-id: req_mock%06llu\r\n", ++M.ids);
  }
  if (f && f->has_retry_after) sb_printf(&m->extra, "retry-after: %llu\r\n", (unsigned long long)f->retry_after);
  if (f && f->has_retry_after_ms)
    sb_printf(&m->extra, "retry-after-ms: %llu\r\n", (unsigned long long)f->retry_after_ms);
  if (f && f->should_retry >= 0)
    sb_printf(&m->extra, "x-should-retry: %s\r\n", f->should_retry ? "true" : "false");
  whole(c, status, &b);
}

static void bad_request(conn *c, int dialect, const char *message) {
  error_reply(c, dialect, 400, "invalid_request_error", NULL, message, NULL);
  deliver(c, 0);
}

/* Answers with the fault's error status when it is one; returns 1 then. */
static int fault_status(conn *c, int dialect, const fault *f) {
  if (f->kind == K_429) {
    error_reply(c, dialect, 429, dialect == D_ANTHROPIC ? "rate_limit_error" : "requests",
                "rate_limit_exceeded", "Rate limit reached (mock)", f);
  } else if (f->kind == K_500) {
    error_reply(c, dialect, 500, dialect == D_ANTHROPIC ? "api_error" : "server_error", NULL,
                "The server had an error (mock)", f);
  } else if (f->kind == K_529) {
    error_reply(c, dialect, 529, "overloaded_error", NULL, "Overloaded", f);
  } else if (f->kind == K_401) {
    /* As some APIs do, the message quotes the credential it refused. */
    const char *v = header_get(c, dialect == D_ANTHROPIC ? "x-api-key" : "authorization");
    sbuf msg = {0};
    sb_printf(&msg, "Incorrect API key provided: %s", v ? v : "(none)");
    error_reply(c, dialect, 401, dialect == D_ANTHROPIC ? "authentication_error" : "invalid_request_error",
                dialect == D_ANTHROPIC ? NULL : "invalid_api_key", msg.p, f);
    sb_free(&msg);
  } else {
    return 0;
  }
  deliver(c, 0);
  return 1;
}

/* Chat ------------------------------------------------------------------ */

/* The shared fields of one chat response. */
typedef struct {
  int dialect, include_usage;
  char id[40];
  long long created;
  const char *model;
  uint64_t chunk;
} chat;

static const char *finish_name(const chat *ch, int finish) {
  if (ch->dialect == D_ANTHROPIC)
    return finish == F_TOOLS ? "tool_use" : finish == F_LENGTH ? "max_tokens" : "end_turn";
  return finish == F_TOOLS ? "tool_calls" : finish == F_LENGTH ? "length" : "stop";
}

/* The length of the next piece of s[0, n): chunk bytes, less so as not to
 * split a UTF-8 sequence, more when one sequence is longer than chunk. */
static size_t piece_len(const char *s, size_t n, uint64_t chunk) {
  size_t k = utf8_cut(s, n, chunk < n ? (size_t)chunk : n);
  if (k == 0) {
    k = 1;
    while (k < n && ((unsigned char)s[k] & 0xc0) == 0x80) k++;
  }
  return k;
}

/* Starts an OpenAI chunk event: its fields before "choices". */
static sbuf *oa_start(mreq *m, const chat *ch, int is_delta) {
  sbuf *e = ev_add(m, is_delta);
  sb_printf(e,
            "data: {\"id\":\"%s\",\"object\":\"chat.completion.chunk\",\"created\":%lld,\"model\":",
            ch->id, ch->created);
  sb_json(e, ch->model, strlen(ch->model));
  return e;
}

/* Appends an OpenAI chunk event whose delta is the JSON text delta. */
static void oa_chunk(mreq *m, const chat *ch, int is_delta, const char *delta, const char *finish) {
  sbuf *e = oa_start(m, ch, is_delta);
  sb_puts(e, ",\"choices\":[{\"index\":0,\"delta\":");
  sb_puts(e, delta);
  sb_puts(e, ",\"logprobs\":null,\"finish_reason\":");
  if (finish) sb_printf(e, "\"%s\"", finish);
  else sb_puts(e, "null");
  sb_puts(e, "}]");
  if (ch->include_usage) sb_puts(e, ",\"usage\":null");
  sb_puts(e, "}\n\n");
}

/* Appends an Anthropic event; body holds the members after "type". */
static void an_event(mreq *m, int is_delta, const char *type, const char *body) {
  sbuf *e = ev_add(m, is_delta);
  sb_printf(e, "event: %s\ndata: {\"type\":\"%s\"%s}\n\n", type, type, body);
}

/* Adds a content delta event for each piece of s[0, n), the piece as a
 * JSON string between pre and post. */
static void add_pieces(mreq *m, const chat *ch, const char *s, size_t n, const char *pre,
                       const char *post) {
  sbuf d = {0};
  size_t off, k;
  for (off = 0; off < n; off += k) {
    k = piece_len(s + off, n - off, ch->chunk);
    d.len = 0;
    sb_puts(&d, pre);
    sb_json(&d, s + off, k);
    sb_puts(&d, post);
    if (ch->dialect == D_ANTHROPIC) an_event(m, 1, "content_block_delta", d.p);
    else oa_chunk(m, ch, 1, d.p, NULL);
  }
  sb_free(&d);
}

static void usage_json(sbuf *b, const chat *ch, const reply *rp) {
  if (ch->dialect == D_ANTHROPIC)
    sb_printf(b, "{\"input_tokens\":%llu,\"output_tokens\":%llu}", rp->in_tok, rp->out_tok);
  else
    sb_printf(b, "{\"prompt_tokens\":%llu,\"completion_tokens\":%llu,\"total_tokens\":%llu}",
              rp->in_tok, rp->out_tok, rp->in_tok + rp->out_tok);
}

static void oa_stream(mreq *m, const chat *ch, const reply *rp) {
  sbuf d = {0};
  char pre[96];
  size_t i;
  oa_chunk(m, ch, 0,
           rp->text.len || !rp->ncalls ? "{\"role\":\"assistant\",\"content\":\"\"}"
                                       : "{\"role\":\"assistant\",\"content\":null}",
           NULL);
  add_pieces(m, ch, rp->text.p, rp->text.len, "{\"content\":", "}");
  for (i = 0; i < rp->ncalls; i++) {
    const call *c = &rp->calls[i];
    d.len = 0;
    sb_printf(&d, "{\"tool_calls\":[{\"index\":%zu,\"id\":\"%s\",\"type\":\"function\",\"function\":{\"name\":",
              i, c->id);
    sb_json(&d, c->name, strlen(c->name));
    sb_puts(&d, ",\"arguments\":\"\"}}]}");
    oa_chunk(m, ch, 0, d.p, NULL);
    snprintf(pre, sizeof pre, "{\"tool_calls\":[{\"index\":%zu,\"function\":{\"arguments\":", i);
    add_pieces(m, ch, c->args.p, c->args.len, pre, "}}]}");
  }
  oa_chunk(m, ch, 0, "{}", finish_name(ch, rp->finish));
  if (ch->include_usage) {
    sbuf *e = oa_start(m, ch, 0);
    sb_puts(e, ",\"choices\":[],\"usage\":");
    usage_json(e, ch, rp);
    sb_puts(e, "}\n\n");
  }
  sb_puts(ev_add(m, 0), "data: [DONE]\n\n");
  sb_free(&d);
}

static void an_stream(mreq *m, const chat *ch, const reply *rp) {
  sbuf d = {0};
  char pre[128];
  size_t i, block = 0;
  sb_printf(&d, ",\"message\":{\"id\":\"%s\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":",
            ch->id);
  sb_json(&d, ch->model, strlen(ch->model));
  sb_printf(&d, ",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":%llu,\"output_tokens\":1}}",
            rp->in_tok);
  an_event(m, 0, "message_start", d.p);
  if (rp->text.len || !rp->ncalls) {
    an_event(m, 0, "content_block_start", ",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}");
    an_event(m, 0, "ping", "");
    add_pieces(m, ch, rp->text.p, rp->text.len, ",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":", "}");
    an_event(m, 0, "content_block_stop", ",\"index\":0");
    block++;
  }
  for (i = 0; i < rp->ncalls; i++, block++) {
    const call *c = &rp->calls[i];
    d.len = 0;
    sb_printf(&d, ",\"index\":%zu,\"content_block\":{\"type\":\"tool_use\",\"id\":\"%s\",\"name\":", block, c->id);
    sb_json(&d, c->name, strlen(c->name));
    sb_puts(&d, ",\"input\":{}}");
    an_event(m, 0, "content_block_start", d.p);
    if (block == 0) an_event(m, 0, "ping", "");
    d.len = 0;
    sb_printf(&d, ",\"index\":%zu,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}", block);
    an_event(m, 0, "content_block_delta", d.p);
    snprintf(pre, sizeof pre, ",\"index\":%zu,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":", block);
    add_pieces(m, ch, c->args.p, c->args.len, pre, "}");
    d.len = 0;
    sb_printf(&d, ",\"index\":%zu", block);
    an_event(m, 0, "content_block_stop", d.p);
  }
  d.len = 0;
  sb_printf(&d, ",\"delta\":{\"stop_reason\":\"%s\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":%llu}",
            finish_name(ch, rp->finish), rp->out_tok);
  an_event(m, 0, "message_delta", d.p);
  an_event(m, 0, "message_stop", "");
  sb_free(&d);
}

static void oa_whole(sbuf *b, const chat *ch, const reply *rp) {
  size_t i;
  sb_printf(b, "{\"id\":\"%s\",\"object\":\"chat.completion\",\"created\":%lld,\"model\":", ch->id,
            ch->created);
  sb_json(b, ch->model, strlen(ch->model));
  sb_puts(b, ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":");
  if (rp->text.len || !rp->ncalls) sb_json(b, rp->text.p ? rp->text.p : "", rp->text.len);
  else sb_puts(b, "null");
  if (rp->ncalls) {
    sb_puts(b, ",\"tool_calls\":[");
    for (i = 0; i < rp->ncalls; i++) {
      const call *c = &rp->calls[i];
      sb_printf(b, "%s{\"id\":\"%s\",\"type\":\"function\",\"function\":{\"name\":", i ? "," : "", c->id);
      sb_json(b, c->name, strlen(c->name));
      sb_puts(b, ",\"arguments\":");
      sb_json(b, c->args.p ? c->args.p : "", c->args.len);
      sb_puts(b, "}}");
    }
    sb_puts(b, "]");
  }
  sb_printf(b, "},\"logprobs\":null,\"finish_reason\":\"%s\"}],\"usage\":", finish_name(ch, rp->finish));
  usage_json(b, ch, rp);
  sb_puts(b, "}");
}

static void an_whole(sbuf *b, const chat *ch, const reply *rp) {
  size_t i;
  int first = 1;
  sb_printf(b, "{\"id\":\"%s\",\"type\":\"message\",\"role\":\"assistant\",\"model\":", ch->id);
  sb_json(b, ch->model, strlen(ch->model));
  sb_puts(b, ",\"content\":[");
  if (rp->text.len || !rp->ncalls) {
    sb_puts(b, "{\"type\":\"text\",\"text\":");
    sb_json(b, rp->text.p ? rp->text.p : "", rp->text.len);
    sb_puts(b, "}");
    first = 0;
  }
  for (i = 0; i < rp->ncalls; i++) {
    const call *c = &rp->calls[i];
    sb_printf(b, "%s{\"type\":\"tool_use\",\"id\":\"%s\",\"name\":", first ? "" : ",", c->id);
    sb_json(b, c->name, strlen(c->name));
    sb_puts(b, ",\"input\":");
    if (rp->bad_args) sb_json(b, c->args.p ? c->args.p : "", c->args.len);
    else sb_put(b, c->args.p ? c->args.p : "{}", c->args.p ? c->args.len : 2);
    sb_puts(b, "}");
    first = 0;
  }
  sb_printf(b, "],\"stop_reason\":\"%s\",\"stop_sequence\":null,\"usage\":", finish_name(ch, rp->finish));
  usage_json(b, ch, rp);
  sb_puts(b, "}");
}

/* Whether the request carries the key the server requires, if any. */
static int authorized(conn *c, int dialect) {
  const char *v;
  size_t n;
  if (!M.api_key) return 1;
  if (dialect == D_ANTHROPIC) {
    v = header_get(c, "x-api-key");
    return v && strcmp(v, M.api_key) == 0;
  }
  v = header_get(c, "authorization");
  n = strlen(M.api_key);
  return v && strlen(v) == 7 + n && ieqn(v, "bearer ", 7) && memcmp(v + 7, M.api_key, n) == 0;
}

/* Applies a stream fault to the events of m. */
static void stream_fault(mreq *m, const chat *ch, const fault *f) {
  size_t at;
  if (f->kind == K_MIDSTREAM) {
    ev_cut(m, ev_after_deltas(m, f->after));
    if (ch->dialect == D_ANTHROPIC)
      sb_puts(ev_add(m, 0), "event: error\ndata: {\"type\":\"error\",\"error\":"
                            "{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n");
    else
      sb_puts(ev_add(m, 0), "data: {\"error\":{\"message\":\"The server had an error while "
                            "processing your request (mock)\",\"type\":\"server_error\","
                            "\"param\":null,\"code\":null}}\n\n");
  } else if (f->kind == K_RESET) {
    ev_cut(m, ev_after_deltas(m, f->after));
    m->reset = 1;
  } else if (f->kind == K_MALFORMED) {
    at = ev_after_deltas(m, 1);
    ev_insert(m, at, ch->dialect == D_ANTHROPIC
                         ? "event: content_block_delta\ndata: {\"type\":\"content_block_delta\","
                           "\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"\n\n"
                         : "data: {\"id\":\"chatcmpl-broken\",\"choices\":[{\"delta\":{\"content\":\"\n\n");
  }
}

static void route_chat(conn *c, int dialect, const fault *f, uint64_t *pace) {
  request *r = &c->r;
  mreq *m = mreq_of(c);
  jv req;
  const jv *v;
  const char *err = NULL;
  convo cv;
  reply rp;
  chat ch;
  long long max_tokens = -1;

  if (!authorized(c, dialect)) {
    if (dialect == D_ANTHROPIC)
      error_reply(c, dialect, 401, "authentication_error", NULL, "invalid x-api-key", NULL);
    else
      error_reply(c, dialect, 401, "invalid_request_error", "invalid_api_key",
                  "Incorrect API key provided (mock)", NULL);
    deliver(c, 0);
    return;
  }
  if (dialect == D_ANTHROPIC && !header_get(c, "anthropic-version")) {
    bad_request(c, dialect, "anthropic-version: header is required");
    return;
  }
  if (json_parse(r->body.p ? r->body.p : "", r->body.len, &req, &err) < 0) {
    char msg[160];
    snprintf(msg, sizeof msg, "the body is not valid JSON: %s", err);
    bad_request(c, dialect, msg);
    return;
  }
  memset(&cv, 0, sizeof cv);
  memset(&rp, 0, sizeof rp);
  memset(&ch, 0, sizeof ch);
  cv.dialect = ch.dialect = dialect;
  cv.model = ch.model = jv_str(jv_get(&req, "model")) ? jv_get(&req, "model")->s : M.model;
  if (!jv_is(&req, J_OBJ)) err = "the body must be a JSON object";
  else err = convo_read(&cv, &req);
  if (!err) convo_form(&cv, &req);
  v = jv_get(&req, dialect == D_OPENAI && jv_get(&req, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens");
  if (!err && v) {
    if (v->t != J_NUM || v->s[0] == '-' || strpbrk(v->s, ".eE") || strlen(v->s) > 12)
      err = "max_tokens must be a non-negative integer";
    else
      max_tokens = atoll(v->s);
  } else if (!err && dialect == D_ANTHROPIC) {
    err = "max_tokens: field required";
  }
  if (err) {
    bad_request(c, dialect, err);
    goto done;
  }

  reply_make(&rp, &cv);
  if (f->kind == K_BAD_ARGS) reply_break_args(&rp, &cv);
  reply_finish(&rp, r->body.len, max_tokens);

  ch.include_usage = jv_is(jv_get(jv_get(&req, "stream_options"), "include_usage"), J_TRUE);
  ch.created = (long long)time(NULL);
  ch.chunk = pace[0];
  snprintf(ch.id, sizeof ch.id, dialect == D_ANTHROPIC ? "msg_mock%06llu" : "chatcmpl-mock%06llu", ++M.ids);
  if (jv_is(jv_get(&req, "stream"), J_TRUE)) {
    M.streams++;
    m->stream = 1;
    m->delay_ms = pace[1];
    if (dialect == D_ANTHROPIC) an_stream(m, &ch, &rp);
    else oa_stream(m, &ch, &rp);
    stream_fault(m, &ch, f);
  } else if (f->kind == K_MIDSTREAM) {
    error_reply(c, dialect, 500, dialect == D_ANTHROPIC ? "api_error" : "server_error", NULL,
                "The server had an error (mock)", f);
  } else {
    sbuf b = {0};
    if (dialect == D_ANTHROPIC) an_whole(&b, &ch, &rp);
    else oa_whole(&b, &ch, &rp);
    if (f->kind == K_MALFORMED) b.len = b.len / 2;
    whole(c, 200, &b);
    m->reset = f->kind == K_RESET;
  }
  deliver(c, f->kind == K_SLOW ? f->ms : pace[2]);
done:
  reply_free(&rp);
  convo_free(&cv);
  jv_free(&req);
}

/* Search ---------------------------------------------------------------- */

static uint64_t fnv1a(const char *s, size_t n, uint64_t h) {
  size_t i;
  for (i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
  return h;
}

static void route_search(conn *c, const fault *f) {
  static const char *const sites[] = {"docs", "blog", "wiki", "forum", "kb", "status"};
  static const char *const kinds[] = {"Troubleshooting", "Postmortem", "Tuning guide",
                                      "Runbook", "Monitoring", "Known issues"};
  static const char *const says[] = {
      "a connection pool that is too small shows up first as p99 latency",
      "retry storms after a deploy multiply load on the slowest dependency",
      "garbage-collection pauses explain periodic latency spikes",
      "an index missing after a migration turns fast queries into scans",
      "error rates that rise with traffic point at a saturated resource",
      "rolling back the latest change is the quickest way to confirm a regression"};
  size_t qlen = 0, i, j;
  const char *q = param_get(c, "q", &qlen);
  uint64_t count, h;
  sbuf b = {0}, slug = {0};
  if (!q || qlen == 0 || num_param(c, "count", 5, SEARCH_MAX, &count) < 0) {
    error_reply(c, D_PLAIN, 400, "invalid_request_error", NULL,
                "q is required and count is 0..20", NULL);
    deliver(c, 0);
    return;
  }
  h = fnv1a(q, qlen, 0xcbf29ce484222325ull);
  for (i = 0; i < qlen && slug.len < 60; i++) {
    char ch = (char)lower((unsigned char)q[i]);
    if ((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9')) sb_put(&slug, &ch, 1);
    else if (slug.len && slug.p[slug.len - 1] != '-') sb_put(&slug, "-", 1);
  }
  if (!slug.len) sb_puts(&slug, "q");
  sb_puts(&b, "{\"query\":");
  sb_json(&b, q, qlen);
  sb_printf(&b, ",\"number_of_results\":%llu,\"results\":[", (unsigned long long)count);
  for (i = 0; i < count; i++) {
    uint64_t hi = fnv1a((const char *)&i, sizeof i, h);
    j = (size_t)(hi % 6);
    sb_printf(&b, "%s{\"title\":", i ? "," : "");
    {
      sbuf t = {0};
      sb_printf(&t, "%s: ", kinds[j]);
      sb_put(&t, q, qlen);
      sb_json(&b, t.p, t.len);
      sb_free(&t);
    }
    sb_printf(&b, ",\"url\":\"https://%s.example.com/%s/%016llx\",\"content\":",
              sites[(hi >> 8) % 6], slug.p, (unsigned long long)hi);
    {
      sbuf t = {0};
      sb_puts(&t, "About ");
      sb_put(&t, q, qlen);
      sb_printf(&t, ": %s.", says[(hi >> 16) % 6]);
      sb_json(&b, t.p, t.len);
      sb_free(&t);
    }
    sb_printf(&b, ",\"engine\":\"mock\",\"score\":%.2f,\"category\":\"general\"}", 1.0 - (double)i * 0.05);
  }
  sb_puts(&b, "],\"answers\":[],\"corrections\":[],\"infoboxes\":[],\"suggestions\":[],"
              "\"unresponsive_engines\":[]}");
  sb_free(&slug);
  if (f->kind == K_MALFORMED) b.len /= 2;
  whole(c, 200, &b);
  deliver(c, f->kind == K_SLOW ? f->ms : 0);
}

/* Counters -------------------------------------------------------------- */

static void route_mock_stats(conn *c) {
  sbuf b = {0};
  int i;
  sb_printf(&b, "{\"requests\":{\"total\":%llu", M.total);
  for (i = 0; i < EP_N; i++) sb_printf(&b, ",\"%s\":%llu", ep_names[i], M.requests[i]);
  sb_printf(&b, "},\"streams\":%llu,\"in_flight\":%llu,\"max_in_flight\":%llu,\"faults\":{\"total\":%llu",
            M.streams, M.in_flight, M.max_in_flight, M.faults_total);
  for (i = 1; i < K_N; i++) sb_printf(&b, ",\"%s\":%llu", kind_names[i], M.faults[i]);
  sb_printf(&b, "},\"connections\":%llu,\"http_requests\":%llu,\"open\":%llu}", S.connections,
            S.requests, S.open);
  respond(c, 200, "application/json", b.p, b.len, NULL);
  sb_free(&b);
}

static void reset_counters(void) {
  while (M.seen) {
    struct seen *s = M.seen;
    M.seen = s->next;
    free(s);
  }
  memset(M.requests, 0, sizeof M.requests);
  memset(M.faults, 0, sizeof M.faults);
  M.total = M.streams = M.faults_total = 0;
  M.max_in_flight = M.in_flight;
}

/* Routing --------------------------------------------------------------- */

static int ext_route(conn *c) {
  request *r = &c->r;
  int ep, dialect = D_OPENAI, post = strcmp(r->method, "POST") == 0;
  fault f;
  uint64_t pace[3];
  const char *sv;

  if (!R.loaded && rules_load(default_rules, sizeof default_rules - 1, "built-in rules") < 0)
    abort();
  if (path_is(c, "/stats")) {
    route_mock_stats(c);
    return 1;
  }
  if (path_is(c, "/reset")) {
    reset_counters();
    respond(c, 200, "application/json", "{\"ok\":true}", 11, NULL);
    return 1;
  }
  if (path_is(c, "/last")) {
    if (M.last.len) respond(c, 200, "application/json", M.last.p, M.last.len, NULL);
    else respond_text(c, 404, "no chat request yet");
    return 1;
  }
  if (path_is(c, "/v1/chat/completions") || path_is(c, "/chat/completions")) ep = EP_CHAT;
  else if (path_is(c, "/v1/messages") || path_is(c, "/messages")) ep = EP_MESSAGES, dialect = D_ANTHROPIC;
  else if (path_is(c, "/search")) ep = EP_SEARCH, dialect = D_PLAIN;
  else if (path_is(c, "/v1/models") || path_is(c, "/models")) ep = EP_MODELS;
  else return 0;

  M.requests[ep]++;
  M.total++;
  mreq_of(c)->counted = 1;
  if (++M.in_flight > M.max_in_flight) M.max_in_flight = M.in_flight;

  if (ep == EP_MODELS) {
    sbuf b = {0};
    sb_puts(&b, "{\"object\":\"list\",\"data\":[{\"id\":");
    sb_json(&b, M.model, strlen(M.model));
    sb_puts(&b, ",\"object\":\"model\",\"created\":0,\"owned_by\":\"mockllm\"}]}");
    whole(c, 200, &b);
    deliver(c, 0);
    return 1;
  }
  if ((ep == EP_SEARCH && !(strcmp(r->method, "GET") == 0 || r->head_only)) ||
      (ep != EP_SEARCH && !post)) {
    error_reply(c, dialect, 405, "invalid_request_error", NULL, "method not allowed", NULL);
    deliver(c, 0);
    return 1;
  }
  if (ep != EP_SEARCH) {
    M.last.len = 0;
    echo_json(c, &M.last);
  }
  if (fault_read(c, &f) < 0) {
    bad_request(c, dialect, "x-mock-fault: unknown fault kind or parameter");
    return 1;
  }
  pace[0] = M.chunk;
  pace[1] = M.delay_ms;
  pace[2] = M.first_byte_ms;
  sv = header_get(c, "x-mock-stream");
  if (sv && each_param(sv, stream_param, pace) != 0) {
    bad_request(c, dialect, "x-mock-stream: expected chunk=N;delay_ms=M;first_byte_ms=F");
    return 1;
  }
  /* A search has no stream and no tool calls to spoil. */
  if (ep == EP_SEARCH && (f.kind == K_MIDSTREAM || f.kind == K_BAD_ARGS)) f.kind = K_NONE;
  if (f.kind != K_NONE) {
    M.faults[f.kind]++;
    M.faults_total++;
  }
  if (f.kind == K_RESET && (!f.has_after || ep == EP_SEARCH)) {
    conn_close(c, 1);
    return 1;
  }
  if (fault_status(c, dialect, &f)) return 1;
  if (ep == EP_SEARCH) route_search(c, &f);
  else route_chat(c, dialect, &f, pace);
  return 1;
}

/* Options --------------------------------------------------------------- */

static int ext_option(int argc, char **argv, int *i) {
  static const char *const names[] = {"--rules", "--chunk", "--delay-ms", "--first-byte-ms",
                                      "--api-key", "--model"};
  const char *a = argv[*i], *v = NULL;
  size_t k, n;
  uint64_t num;
  for (k = 0; k < 6; k++) {
    n = strlen(names[k]);
    if (strcmp(a, names[k]) == 0 && *i + 1 < argc) {
      v = argv[++*i];
      break;
    }
    if (strncmp(a, names[k], n) == 0 && a[n] == '=') {
      v = a + n + 1;
      break;
    }
  }
  if (k == 6) return 0;
  switch (k) {
  case 0:
    /* A bad rules file is reported as such, not with the usage line. */
    if (rules_load_file(v) < 0) exit(2);
    return 1;
  case 4: M.api_key = v; return 1;
  case 5: M.model = v; return *v ? 1 : -1;
  default:
    if (parse_num(v, strlen(v), k == 1 ? 1u << 20 : 86400000, &num) < 0 || (k == 1 && num == 0))
      return -1;
    if (k == 1) M.chunk = num;
    else if (k == 2) M.delay_ms = num;
    else M.first_byte_ms = num;
    return 1;
  }
}
