/*
 * template.c — load, check and render the email templates (see template.h).
 *
 * This is part of EXECUTE: when the applier sends the email of a
 * DUN_C_SEND_EMAIL consequence it renders the kind's template with the
 * account's values and passes subject and body to smtp.c.
 *
 * A template is compiled once, at load time, into two flat lists of
 * operations (one for the subject, one for the body): literal text, insert a
 * value, and the three block markers. An {{#if}} stores where to jump when its
 * value is false (just past its {{else}}, or to its {{/if}}); an {{else}}
 * stores where its {{/if}} is, so reaching it from the true branch skips the
 * false one. Rendering is then a single loop that cannot meet a syntax error:
 * every mistake a template can contain was reported, with its file and line,
 * when it was loaded.
 *
 * Values come from outside (the customer name is whatever the customer typed
 * at the provider) and are sanitized on the way in: invalid UTF-8 becomes
 * '?', control characters become spaces, each value is capped. The subject
 * is further squeezed to one line, so nothing a customer controls can start
 * a new header.
 */
#include "apply/email/template.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/buf.h"
#include "util/mem.h"

/* The placeholders. X(id, name) — the names are part of the template format. */
#define VAR_LIST(X)                               \
	X(V_ACCOUNT_ID, "account_id")             \
	X(V_CUSTOMER_NAME, "customer_name")       \
	X(V_AMOUNT_DUE, "amount_due")             \
	X(V_CURRENCY, "currency")                 \
	X(V_INVOICE_LIST, "invoice_list")         \
	X(V_PAY_URL, "pay_url")                   \
	X(V_NEXT_ACTION_DATE, "next_action_date") \
	X(V_NEXT_ACTION, "next_action")           \
	X(V_RETRIES_LEFT, "retries_left")         \
	X(V_RETRIES_COUNTED, "retries_counted")   \
	X(V_SUPPORT_EMAIL, "support_email")       \
	X(V_PAID, "paid")                         \
	X(V_WRITTEN_OFF, "written_off")           \
	X(V_VOIDED_INVOICE, "voided_invoice")

#define VAR_ENUM(id, name) id,
enum var_id { VAR_LIST(VAR_ENUM) V__COUNT };
#undef VAR_ENUM

#define VAR_NAME(id, name) name,
static const char *const var_names[V__COUNT] = {VAR_LIST(VAR_NAME)};
#undef VAR_NAME

enum op_type { OP_TEXT, OP_VAR, OP_IF, OP_ELSE, OP_END };

struct op {
	enum op_type type;
	enum var_id var; /* OP_VAR, OP_IF */
	size_t off, len; /* OP_TEXT: a slice of dun_template.text */
	int jump;	 /* OP_IF: target when false; OP_ELSE: its OP_END */
};

struct part {
	struct op *ops;
	int n, cap;
};

struct dun_template {
	char *text; /* the file's bytes; OP_TEXT slices point into it */
	struct part subject, body;
};

struct dun_template_set {
	struct dun_template *by_kind[DUN_EMAIL_KIND__COUNT];
};

/* Length of the valid UTF-8 sequence at s (at most n bytes), 0 if invalid. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
	unsigned char c = s[0];
	size_t need;
	unsigned int min;
	unsigned int cp;
	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf) {
		need = 2;
		min = 0x80;
		cp = c & 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		need = 3;
		min = 0x800;
		cp = c & 0x0f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		need = 4;
		min = 0x10000;
		cp = c & 0x07;
	} else {
		return 0;
	}
	if (n < need)
		return 0;
	for (size_t i = 1; i < need; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return need;
}

/*
 * Append an outside value: valid UTF-8 is kept, an invalid byte becomes '?',
 * a control character (CR and LF included) becomes a space, and the value is
 * cut, on a character boundary, at DUN_TEMPLATE_VALUE_MAX bytes.
 */
static void add_value(struct dun_buf *b, const char *s)
{
	if (!s)
		return;
	const unsigned char *u = (const unsigned char *)s;
	size_t n = strlen(s), i = 0, out = 0;
	while (i < n) {
		size_t k = utf8_seq(u + i, n - i);
		if (out + (k ? k : 1) > DUN_TEMPLATE_VALUE_MAX)
			break;
		if (k == 0) {
			dun_buf_add(b, "?", 1);
			k = 1;
		} else if (k == 1 && (u[i] < 0x20 || u[i] == 0x7f)) {
			dun_buf_add(b, " ", 1);
		} else {
			dun_buf_add(b, s + i, k);
		}
		i += k;
		out += k;
	}
}

static bool is_empty(const char *s)
{
	return !s || !*s;
}

/* Decimals of a currency's minor unit (ISO 4217, as the provider counts them). */
static int currency_decimals(const char *cur)
{
	static const char *const zero[] = {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga",
					   "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"};
	static const char *const three[] = {"bhd", "jod", "kwd", "omr", "tnd"};
	char low[4];
	size_t i;
	if (!cur)
		return 2;
	for (i = 0; cur[i] && i < 3; i++)
		low[i] = (char)((cur[i] >= 'A' && cur[i] <= 'Z') ? cur[i] - 'A' + 'a' : cur[i]);
	low[i] = '\0';
	if (i != 3 || cur[3])
		return 2;
	for (size_t j = 0; j < sizeof zero / sizeof zero[0]; j++)
		if (strcmp(low, zero[j]) == 0)
			return 0;
	for (size_t j = 0; j < sizeof three / sizeof three[0]; j++)
		if (strcmp(low, three[j]) == 0)
			return 3;
	return 2;
}

/* The currency as an upper-case code of letters only (at most 8). */
static void currency_code(char *out, size_t out_size, const char *cur)
{
	size_t o = 0;
	for (size_t i = 0; cur && cur[i] && o + 1 < out_size && o < 8; i++) {
		char c = cur[i];
		if (c >= 'a' && c <= 'z')
			out[o++] = (char)(c - 'a' + 'A');
		else if (c >= 'A' && c <= 'Z')
			out[o++] = c;
	}
	if (out_size)
		out[o] = '\0';
}

void dun_email_money(char *out, size_t out_size, int64_t minor, const char *currency)
{
	uint64_t u = minor < 0 ? (uint64_t)0 - (uint64_t)minor : (uint64_t)minor;
	int dec = currency_decimals(currency);
	uint64_t div = dec == 0 ? 1 : dec == 3 ? 1000 : 100;
	char code[9];
	currency_code(code, sizeof code, currency);
	const char *sep = code[0] ? " " : "";
	if (dec == 0)
		snprintf(out, out_size, "%s%llu%s%s", minor < 0 ? "-" : "", (unsigned long long)u,
			 sep, code);
	else
		snprintf(out, out_size, "%s%llu.%0*llu%s%s", minor < 0 ? "-" : "",
			 (unsigned long long)(u / div), dec, (unsigned long long)(u % div), sep,
			 code);
}

static void format_date(char *out, size_t out_size, int64_t t)
{
	time_t tt = (time_t)t;
	struct tm tm;
	if (!t || !gmtime_r(&tt, &tm)) {
		out[0] = '\0';
		return;
	}
	snprintf(out, out_size, "%04d-%02d-%02d", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
}

static bool var_is_true(const struct dun_email_vars *v, enum var_id id)
{
	switch (id) {
	case V_ACCOUNT_ID:
		return !is_empty(v->account_id);
	case V_CUSTOMER_NAME:
		return !is_empty(v->customer_name);
	case V_AMOUNT_DUE:
		return v->amount_due_minor != 0;
	case V_CURRENCY:
		return !is_empty(v->currency);
	case V_INVOICE_LIST:
		return v->n_invoices > 0 && v->invoices;
	case V_PAY_URL:
		return !is_empty(v->pay_url);
	case V_NEXT_ACTION_DATE:
		return v->next_action_at != 0;
	case V_NEXT_ACTION:
		return !is_empty(v->next_action);
	case V_RETRIES_LEFT:
		return v->retries_left > 0;
	case V_RETRIES_COUNTED:
		return v->retries_counted;
	case V_SUPPORT_EMAIL:
		return !is_empty(v->support_email);
	case V_PAID:
		return v->exit_reason && !strcmp(v->exit_reason, "paid");
	case V_WRITTEN_OFF:
		return v->exit_reason && !strcmp(v->exit_reason, "written_off");
	case V_VOIDED_INVOICE:
		return !is_empty(v->voided_invoice);
	case V__COUNT:
		break;
	}
	return false;
}

static void add_var(struct dun_buf *b, const struct dun_email_vars *v, enum var_id id)
{
	char tmp[64];
	switch (id) {
	case V_ACCOUNT_ID:
		add_value(b, v->account_id);
		return;
	case V_CUSTOMER_NAME:
		/* "Hello there," reads well; "Hello ," does not. */
		add_value(b, is_empty(v->customer_name) ? "there" : v->customer_name);
		return;
	case V_AMOUNT_DUE:
		dun_email_money(tmp, sizeof tmp, v->amount_due_minor, v->currency);
		dun_buf_str(b, tmp);
		return;
	case V_CURRENCY:
		currency_code(tmp, sizeof tmp, v->currency);
		dun_buf_str(b, tmp);
		return;
	case V_INVOICE_LIST:
		for (int i = 0; v->invoices && i < v->n_invoices; i++) {
			const struct dun_email_invoice *inv = &v->invoices[i];
			if (i)
				dun_buf_str(b, "\n");
			dun_buf_str(b, "- ");
			add_value(b, inv->id);
			dun_buf_str(b, ": ");
			dun_email_money(tmp, sizeof tmp, inv->amount_minor,
					is_empty(inv->currency) ? v->currency : inv->currency);
			dun_buf_str(b, tmp);
			format_date(tmp, sizeof tmp, inv->issued_at);
			if (tmp[0]) {
				dun_buf_str(b, ", issued ");
				dun_buf_str(b, tmp);
			}
		}
		return;
	case V_PAY_URL:
		add_value(b, v->pay_url);
		return;
	case V_NEXT_ACTION_DATE:
		format_date(tmp, sizeof tmp, v->next_action_at);
		dun_buf_str(b, tmp);
		return;
	case V_NEXT_ACTION:
		add_value(b, v->next_action);
		return;
	case V_RETRIES_LEFT:
		snprintf(tmp, sizeof tmp, "%d", v->retries_left > 0 ? v->retries_left : 0);
		dun_buf_str(b, tmp);
		return;
	case V_RETRIES_COUNTED:
		add_value(b, v->retries_counted ? "yes" : "");
		return;
	case V_SUPPORT_EMAIL:
		add_value(b, v->support_email);
		return;
	case V_PAID:
	case V_WRITTEN_OFF:
		add_value(b, v->exit_reason);
		return;
	case V_VOIDED_INVOICE:
		add_value(b, v->voided_invoice);
		return;
	case V__COUNT:
		return;
	}
}

/* ---- parsing ---- */

struct open_block {
	int if_op, else_op, line;
	enum var_id var;
};

struct parser {
	const char *name;
	const char *text; /* the template's own copy */
	char *err;
	size_t err_size;
	struct part *part;
	bool in_subject;
	struct open_block open[DUN_TEMPLATE_DEPTH_MAX];
	int depth;
};

static enum dun_err fail(struct parser *p, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static enum dun_err fail(struct parser *p, int line, const char *fmt, ...)
{
	if (!p->err_size)
		return DUN_E_CONFIG;
	int n = snprintf(p->err, p->err_size, "%s:%d: ", p->name, line);
	if (n >= 0 && (size_t)n < p->err_size) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(p->err + n, p->err_size - (size_t)n, fmt, ap);
		va_end(ap);
	}
	return DUN_E_CONFIG;
}

static int emit(struct part *part, enum op_type type)
{
	if (part->n == part->cap) {
		part->cap = part->cap ? part->cap * 2 : 16;
		part->ops = dun_realloc(part->ops, (size_t)part->cap * sizeof *part->ops);
	}
	struct op *o = &part->ops[part->n];
	memset(o, 0, sizeof *o);
	o->type = type;
	return part->n++;
}

static void emit_text(struct parser *p, size_t off, size_t len)
{
	if (!len)
		return;
	int i = emit(p->part, OP_TEXT);
	p->part->ops[i].off = off;
	p->part->ops[i].len = len;
}

static bool lookup_var(const char *s, size_t n, enum var_id *out)
{
	for (int i = 0; i < V__COUNT; i++) {
		if (strlen(var_names[i]) == n && memcmp(var_names[i], s, n) == 0) {
			*out = (enum var_id)i;
			return true;
		}
	}
	return false;
}

/* The tag as written, for an error message: "{{...}}", cut if long. */
static void tag_quote(char *out, size_t out_size, const char *s, size_t n)
{
	char body[48];
	size_t k = n < sizeof body - 1 ? n : sizeof body - 1;
	for (size_t i = 0; i < k; i++)
		body[i] = (s[i] < 0x20 && s[i] >= 0) ? '?' : s[i];
	body[k] = '\0';
	snprintf(out, out_size, "{{%s%s}}", body, k < n ? "..." : "");
}

static bool is_blank(char c)
{
	return c == ' ' || c == '\t';
}

/*
 * Compile one tag (the bytes between "{{" and "}}", tag_off .. +n in the
 * template text) into an operation.
 */
static enum dun_err compile_tag(struct parser *p, size_t tag_off, size_t n, int line)
{
	const char *s = p->text + tag_off;
	char quoted[80];
	tag_quote(quoted, sizeof quoted, s, n);
	while (n && is_blank(*s)) {
		s++;
		n--;
	}
	while (n && is_blank(s[n - 1]))
		n--;

	if (n && s[0] == '#') {
		if (n < 4 || memcmp(s, "#if", 3) != 0 || !is_blank(s[3]))
			return fail(p, line, "unknown block %s (the only block is {{#if name}})",
				    quoted);
		const char *name = s + 3;
		size_t name_len = n - 3;
		while (name_len && is_blank(*name)) {
			name++;
			name_len--;
		}
		enum var_id var;
		if (!lookup_var(name, name_len, &var))
			return fail(p, line, "unknown placeholder in %s", quoted);
		if (p->depth == DUN_TEMPLATE_DEPTH_MAX)
			return fail(p, line, "{{#if}} blocks nested deeper than %d",
				    DUN_TEMPLATE_DEPTH_MAX);
		int i = emit(p->part, OP_IF);
		p->part->ops[i].var = var;
		p->open[p->depth++] = (struct open_block){i, -1, line, var};
		return DUN_OK;
	}
	if (n == 4 && memcmp(s, "else", 4) == 0) {
		if (!p->depth)
			return fail(p, line, "{{else}} outside an {{#if}} block");
		struct open_block *b = &p->open[p->depth - 1];
		if (b->else_op >= 0)
			return fail(p, line, "second {{else}} in the {{#if %s}} of line %d",
				    var_names[b->var], b->line);
		int i = emit(p->part, OP_ELSE);
		p->part->ops[b->if_op].jump = i + 1;
		b->else_op = i;
		return DUN_OK;
	}
	if (n && s[0] == '/') {
		if (n != 3 || memcmp(s, "/if", 3) != 0)
			return fail(p, line, "unknown block end %s (blocks end with {{/if}})",
				    quoted);
		if (!p->depth)
			return fail(p, line, "{{/if}} without an open {{#if}}");
		struct open_block *b = &p->open[--p->depth];
		int i = emit(p->part, OP_END);
		if (b->else_op >= 0)
			p->part->ops[b->else_op].jump = i;
		else
			p->part->ops[b->if_op].jump = i;
		return DUN_OK;
	}
	enum var_id var;
	if (!lookup_var(s, n, &var))
		return fail(p, line, "unknown placeholder %s", quoted);
	if (p->in_subject && var == V_INVOICE_LIST)
		return fail(p, line,
			    "{{invoice_list}} spans several lines and cannot be used "
			    "in the Subject");
	int i = emit(p->part, OP_VAR);
	p->part->ops[i].var = var;
	return DUN_OK;
}

/* Compile text off .. off+len (one line, with or without its "\n"). */
static enum dun_err compile_span(struct parser *p, size_t off, size_t len, int line)
{
	size_t end = off + len, i = off, lit = off;
	while (i + 1 < end) {
		if (p->text[i] == '{' && p->text[i + 1] == '{') {
			size_t close = i + 2;
			while (close + 1 < end &&
			       !(p->text[close] == '}' && p->text[close + 1] == '}'))
				close++;
			if (close + 1 >= end)
				return fail(p, line, "'{{' is not closed by '}}' on the same line");
			emit_text(p, lit, i - lit);
			enum dun_err e = compile_tag(p, i + 2, close - i - 2, line);
			if (e != DUN_OK)
				return e;
			i = close + 2;
			lit = i;
		} else {
			i++;
		}
	}
	emit_text(p, lit, end - lit);
	return DUN_OK;
}

/*
 * Whether the line (without its "\n") is one block tag and blanks only; if
 * so, tag_off and tag_len receive the inside of the tag.
 */
static bool standalone_block(const char *text, size_t off, size_t len, size_t *tag_off,
			     size_t *tag_len)
{
	size_t a = off, b = off + len;
	while (a < b && is_blank(text[a]))
		a++;
	while (b > a && is_blank(text[b - 1]))
		b--;
	if (b - a < 5 || text[a] != '{' || text[a + 1] != '{' || text[b - 1] != '}' ||
	    text[b - 2] != '}')
		return false;
	for (size_t i = a + 2; i + 1 < b - 2; i++)
		if (text[i] == '{' && text[i + 1] == '{')
			return false;
	for (size_t i = a + 2; i + 1 < b; i++)
		if (text[i] == '}' && text[i + 1] == '}' && i != b - 2)
			return false;
	size_t s = a + 2;
	while (s < b - 2 && is_blank(text[s]))
		s++;
	if (text[s] != '#' && text[s] != '/' &&
	    !(b - 2 - s >= 4 && memcmp(text + s, "else", 4) == 0))
		return false;
	*tag_off = a + 2;
	*tag_len = b - 2 - (a + 2);
	return true;
}

static enum dun_err close_part(struct parser *p)
{
	if (p->depth) {
		struct open_block *b = &p->open[p->depth - 1];
		return fail(p, b->line, "{{#if %s}} is never closed by {{/if}}", var_names[b->var]);
	}
	return DUN_OK;
}

static bool has_prefix_ci(const char *s, size_t n, const char *prefix)
{
	size_t k = strlen(prefix);
	if (n < k)
		return false;
	for (size_t i = 0; i < k; i++) {
		char c = s[i];
		if (c >= 'A' && c <= 'Z')
			c = (char)(c - 'A' + 'a');
		if (c != prefix[i])
			return false;
	}
	return true;
}

static enum dun_err compile(struct parser *p, struct dun_template *t, size_t len)
{
	const char *text = t->text;
	size_t pos = 0;
	int line = 0;
	bool have_subject = false, header_done = false;

	/* The raw bytes: UTF-8 (the mail says charset=UTF-8) and no NUL. */
	for (size_t i = 0, l = 1; i < len;) {
		if (text[i] == '\0')
			return fail(p, (int)l, "contains a NUL byte");
		size_t k = utf8_seq((const unsigned char *)text + i, len - i);
		if (!k)
			return fail(p, (int)l, "is not valid UTF-8");
		if (text[i] == '\n')
			l++;
		i += k;
	}

	/* The header block: comments, one Subject, then a blank line. */
	while (pos < len && !header_done) {
		size_t eol = pos;
		while (eol < len && text[eol] != '\n')
			eol++;
		size_t n = eol - pos;
		if (n && text[pos + n - 1] == '\r')
			n--;
		line++;
		if (n == 0) {
			if (!have_subject)
				return fail(p, line,
					    "missing 'Subject:' header (a template starts with "
					    "'Subject: ...', a blank line, then the body)");
			header_done = true;
		} else if (text[pos] == '#') {
			/* a comment for whoever edits the template */
		} else if (has_prefix_ci(text + pos, n, "subject:")) {
			if (have_subject)
				return fail(p, line, "second 'Subject:' header");
			size_t a = pos + 8, b = pos + n;
			while (a < b && is_blank(text[a]))
				a++;
			while (b > a && is_blank(text[b - 1]))
				b--;
			if (a == b)
				return fail(p, line, "empty 'Subject:' header");
			p->part = &t->subject;
			p->in_subject = true;
			enum dun_err e = compile_span(p, a, b - a, line);
			if (e == DUN_OK)
				e = close_part(p);
			if (e != DUN_OK)
				return e;
			have_subject = true;
		} else {
			const char *colon = memchr(text + pos, ':', n);
			if (colon && colon > text + pos &&
			    memchr(text + pos, ' ', (size_t)(colon - (text + pos))) == NULL)
				return fail(p, line,
					    "unknown header '%.*s' (only 'Subject:' is allowed)",
					    (int)(colon - (text + pos)), text + pos);
			return fail(p, line,
				    have_subject
					? "expected a blank line between the header and the body"
					: "missing 'Subject:' header (a template starts with "
					  "'Subject: ...', a blank line, then the body)");
		}
		pos = eol < len ? eol + 1 : eol;
	}
	if (!have_subject)
		return fail(p, line ? line : 1, "missing 'Subject:' header");
	if (!header_done)
		return fail(p, line, "missing blank line and body after the 'Subject:' header");

	/* The body, line by line so a block tag alone on a line takes its line. */
	p->part = &t->body;
	p->in_subject = false;
	bool any = false;
	for (size_t i = pos; i < len; i++)
		if (!(is_blank(text[i]) || text[i] == '\n' || text[i] == '\r'))
			any = true;
	if (!any)
		return fail(p, line + 1, "the body is empty");
	while (pos < len) {
		size_t eol = pos;
		while (eol < len && text[eol] != '\n')
			eol++;
		size_t n = eol - pos;
		if (n && text[pos + n - 1] == '\r')
			n--;
		line++;
		size_t tag_off, tag_len;
		enum dun_err e;
		if (standalone_block(text, pos, n, &tag_off, &tag_len)) {
			e = compile_tag(p, tag_off, tag_len, line);
		} else {
			e = compile_span(p, pos, n, line);
			if (e == DUN_OK && eol < len)
				emit_text(p, eol, 1);
		}
		if (e != DUN_OK)
			return e;
		pos = eol < len ? eol + 1 : eol;
	}
	return close_part(p);
}

enum dun_err dun_template_parse(const char *name, const char *text, size_t len,
				struct dun_template **out, char *err, size_t err_size)
{
	*out = NULL;
	if (err_size)
		err[0] = '\0';
	if (len > DUN_TEMPLATE_FILE_MAX) {
		snprintf(err, err_size, "%s: template is %zu bytes; the limit is %d", name, len,
			 DUN_TEMPLATE_FILE_MAX);
		return DUN_E_TOO_BIG;
	}
	struct dun_template *t = dun_calloc(1, sizeof *t);
	t->text = dun_malloc(len + 1);
	memcpy(t->text, text, len);
	t->text[len] = '\0';
	struct parser p = {.name = name, .text = t->text, .err = err, .err_size = err_size};
	enum dun_err e = compile(&p, t, len);
	if (e != DUN_OK) {
		dun_template_destroy(t);
		return e;
	}
	*out = t;
	return DUN_OK;
}

enum dun_err dun_template_load(const char *path, struct dun_template **out, char *err,
			       size_t err_size)
{
	*out = NULL;
	FILE *f = fopen(path, "rb");
	if (!f) {
		snprintf(err, err_size, "%s: cannot open template: %s", path, strerror(errno));
		return DUN_E_CONFIG;
	}
	char *data = dun_malloc(DUN_TEMPLATE_FILE_MAX + 1);
	size_t len = fread(data, 1, DUN_TEMPLATE_FILE_MAX + 1, f);
	enum dun_err e = DUN_OK;
	if (ferror(f)) {
		snprintf(err, err_size, "%s: cannot read template: %s", path, strerror(errno));
		e = DUN_E_IO;
		goto close_file;
	}
	e = dun_template_parse(path, data, len, out, err, err_size);
close_file:
	fclose(f);
	free(data);
	return e;
}

void dun_template_destroy(struct dun_template *t)
{
	if (!t)
		return;
	free(t->subject.ops);
	free(t->body.ops);
	free(t->text);
	free(t);
}

static void render_part(const struct dun_template *t, const struct part *part,
			const struct dun_email_vars *v, struct dun_buf *b)
{
	int i = 0;
	while (i < part->n) {
		const struct op *o = &part->ops[i];
		switch (o->type) {
		case OP_TEXT:
			dun_buf_add(b, t->text + o->off, o->len);
			i++;
			break;
		case OP_VAR:
			add_var(b, v, o->var);
			i++;
			break;
		case OP_IF:
			i = var_is_true(v, o->var) ? i + 1 : o->jump;
			break;
		case OP_ELSE:
			i = o->jump;
			break;
		case OP_END:
			i++;
			break;
		}
	}
}

/*
 * Squeeze a rendered subject into one header-safe line: every control
 * character is a space, runs of blanks are one space, no blank at either
 * end, at most DUN_TEMPLATE_SUBJECT_MAX bytes cut on a character boundary.
 */
static char *one_line(const char *s)
{
	size_t n = strlen(s);
	char *out = dun_malloc(n + 1);
	size_t o = 0;
	bool space = false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x20 || c == 0x7f || c == ' ') {
			space = o > 0;
			continue;
		}
		if (space) {
			out[o++] = ' ';
			space = false;
		}
		out[o++] = (char)c;
	}
	if (o > DUN_TEMPLATE_SUBJECT_MAX) {
		o = DUN_TEMPLATE_SUBJECT_MAX;
		while (o && ((unsigned char)out[o] & 0xc0) == 0x80)
			o--;
		while (o && out[o - 1] == ' ')
			o--;
	}
	out[o] = '\0';
	return out;
}

enum dun_err dun_template_render(const struct dun_template *t, const struct dun_email_vars *v,
				 char **subject, char **body)
{
	if (!t || !v || !subject || !body)
		return DUN_E_INVALID;
	struct dun_buf s = {0}, b = {0};
	render_part(t, &t->subject, v, &s);
	render_part(t, &t->body, v, &b);
	*subject = one_line(s.p ? s.p : "");
	free(s.p);
	*body = b.p ? b.p : dun_strdup("");
	return DUN_OK;
}

enum dun_err dun_template_set_load(const char *dir, struct dun_template_set **out, char *err,
				   size_t err_size)
{
	*out = NULL;
	struct dun_template_set *set = dun_calloc(1, sizeof *set);
	for (int k = 0; k < DUN_EMAIL_KIND__COUNT; k++) {
		char *path =
		    dun_asprintf("%s/%s.txt", dir, dun_email_kind_name((enum dun_email_kind)k));
		enum dun_err e = dun_template_load(path, &set->by_kind[k], err, err_size);
		free(path);
		if (e != DUN_OK) {
			dun_template_set_destroy(set);
			return e;
		}
	}
	*out = set;
	return DUN_OK;
}

const struct dun_template *dun_template_set_get(const struct dun_template_set *s,
						enum dun_email_kind kind)
{
	return s->by_kind[kind];
}

void dun_template_set_destroy(struct dun_template_set *s)
{
	if (!s)
		return;
	for (int k = 0; k < DUN_EMAIL_KIND__COUNT; k++)
		dun_template_destroy(s->by_kind[k]);
	free(s);
}
