/*
 * smtp.c — deliver one email to an SMTP server with libcurl (see smtp.h).
 *
 * This is the email adapter of EXECUTE. The applier has already decided that
 * the email must go out, recorded the intent under its dedup key and
 * rendered the text (template.c); this file turns subject and body into an
 * RFC 5322 message and hands it to the configured server. It keeps no state
 * between calls.
 *
 * Exactly-once delivery cannot be had from SMTP alone: the server may accept
 * the message and the process may die before the applier records "sent".
 * The re-run then sends again, with the same Message-ID (derived from the
 * dedup key by dun_smtp_message_id), which lets a relay or mailbox that
 * deduplicates by Message-ID drop the repeat. docs/email.md ("Exactly once")
 * has the whole argument.
 *
 * libcurl reports a CURLcode and, separately, the last SMTP reply; neither
 * alone says whose fault a failure is. A debug callback therefore records
 * which command was last sent (only the verb: AUTH arguments carry
 * credentials) and the server's last reply line, and map_failure() turns the
 * three into one enum dun_err and one message.
 */
#include "apply/email/smtp.h"

#include <curl/curl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/clock.h"
#include "util/buf.h"
#include "util/input.h"
#include "util/mem.h"

const char *dun_smtp_tls_name(enum dun_smtp_tls t)
{
	switch (t) {
	case DUN_SMTP_TLS_NONE:
		return "none";
	case DUN_SMTP_TLS_STARTTLS:
		return "starttls";
	case DUN_SMTP_TLS_IMPLICIT:
		return "implicit";
	}
	return "?";
}

bool dun_smtp_tls_parse(const char *s, enum dun_smtp_tls *out)
{
	static const enum dun_smtp_tls all[] = {DUN_SMTP_TLS_NONE, DUN_SMTP_TLS_STARTTLS,
						DUN_SMTP_TLS_IMPLICIT};
	if (!s)
		return false;
	for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
		if (strcmp(s, dun_smtp_tls_name(all[i])) == 0) {
			*out = all[i];
			return true;
		}
	}
	return false;
}

static bool is_set(const char *s)
{
	return s && *s;
}

static void set_err(char *err, size_t err_size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t err_size, const char *fmt, ...)
{
	if (!err_size)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, err_size, fmt, ap);
	va_end(ap);
}

/*
 * A plain addr-spec as we accept it: printable ASCII without blanks, quotes,
 * brackets or separators, exactly one '@' with something on both sides. No
 * display names, no quoted local parts: the address goes both into the
 * envelope and into a header, and anything fancier is an injection risk.
 */
static bool address_ok(const char *a)
{
	if (!a)
		return false;
	size_t n = strlen(a);
	if (n == 0 || n > DUN_SMTP_ADDRESS_MAX)
		return false;
	const char *at = NULL;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)a[i];
		if (c <= 0x20 || c >= 0x7f || strchr("<>()[]\\,;:\"", c))
			return false;
		if (c == '@') {
			if (at)
				return false;
			at = a + i;
		}
	}
	return at && at != a && at[1] != '\0';
}

/* id-left "@" id-right of RFC 5322, both dot-atoms; we hold it to that. */
static bool message_id_ok(const char *id)
{
	if (!id)
		return false;
	size_t n = strlen(id);
	if (n == 0 || n > DUN_SMTP_MESSAGE_ID_MAX)
		return false;
	int ats = 0;
	char prev = '@';
	for (size_t i = 0; i < n; i++) {
		char c = id[i];
		bool atext = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			     (c >= '0' && c <= '9') || (c && strchr("!#$%&'*+-/=?^_`{|}~", c));
		if (c == '@') {
			if (++ats > 1 || prev == '.' || prev == '@')
				return false;
		} else if (c == '.') {
			if (prev == '.' || prev == '@')
				return false;
		} else if (!atext) {
			return false;
		}
		prev = c;
	}
	return ats == 1 && prev != '.' && prev != '@';
}

static bool host_is_loopback(const char *host)
{
	return strcmp(host, "localhost") == 0 || strncmp(host, "127.", 4) == 0 ||
	       strcmp(host, "[::1]") == 0 || strcmp(host, "::1") == 0;
}

enum dun_err dun_smtp_config_validate(const struct dun_smtp_config *cfg, char *err, size_t err_size)
{
	enum dun_err e = DUN_E_CONFIG;
	char *scheme = NULL, *host = NULL, *user = NULL, *pass = NULL;
	if (!is_set(cfg->url)) {
		set_err(err, err_size, "smtp_url is not set");
		return DUN_E_CONFIG;
	}
	CURLU *u = curl_url();
	if (!u)
		dun_oom();
	char shown[512];
	dun_input_redact_url(cfg->url, shown, sizeof shown);
	if (curl_url_set(u, CURLUPART_URL, cfg->url, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK) {
		set_err(err, err_size,
			"smtp_url '%s' is not a URL like smtp://host:587 or smtps://host:465",
			shown);
		goto free_url;
	}
	curl_url_get(u, CURLUPART_USER, &user, 0);
	curl_url_get(u, CURLUPART_PASSWORD, &pass, 0);
	if (user || pass) {
		/* The URL is printed in errors and logs; the password must not be. */
		set_err(err, err_size,
			"smtp_url must not contain credentials; use smtp_username and "
			"smtp_password (or DUNNING_SMTP_PASSWORD)");
		goto free_url;
	}
	bool smtps = strcmp(scheme, "smtps") == 0;
	if (!smtps && strcmp(scheme, "smtp") != 0) {
		set_err(err, err_size, "smtp_url '%s': the scheme must be smtp:// or smtps://",
			shown);
		goto free_url;
	}
	switch (cfg->tls) {
	case DUN_SMTP_TLS_NONE:
	case DUN_SMTP_TLS_STARTTLS:
		if (smtps) {
			set_err(err, err_size,
				"smtp_tls=%s does not go with smtps:// (use smtp_tls=implicit, "
				"or an smtp:// URL)",
				dun_smtp_tls_name(cfg->tls));
			goto free_url;
		}
		break;
	case DUN_SMTP_TLS_IMPLICIT:
		if (!smtps) {
			set_err(err, err_size,
				"smtp_tls=implicit needs an smtps:// URL (or use "
				"smtp_tls=starttls with smtp://)");
			goto free_url;
		}
		break;
	}
	if (!address_ok(cfg->from)) {
		set_err(err, err_size,
			"smtp_from '%s' is not a plain address like billing@example.com",
			cfg->from ? cfg->from : "");
		goto free_url;
	}
	if (is_set(cfg->username) && !is_set(cfg->password)) {
		set_err(err, err_size,
			"smtp_username is set but no password (smtp_password or "
			"DUNNING_SMTP_PASSWORD)");
		goto free_url;
	}
	if (!is_set(cfg->username) && is_set(cfg->password)) {
		set_err(err, err_size, "a password is set but smtp_username is not");
		goto free_url;
	}
	if (is_set(cfg->username) && cfg->tls == DUN_SMTP_TLS_NONE && !host_is_loopback(host)) {
		set_err(err, err_size,
			"smtp_tls=none would send the SMTP password in clear text to %s; use "
			"starttls or implicit",
			host);
		goto free_url;
	}
	if (cfg->timeout_ms <= 0) {
		set_err(err, err_size, "smtp_timeout_ms must be a positive number of milliseconds");
		goto free_url;
	}
	e = DUN_OK;
free_url:
	curl_free(scheme);
	curl_free(host);
	curl_free(user);
	curl_free(pass);
	curl_url_cleanup(u);
	return e;
}

enum dun_err dun_smtp_message_id(const char *dedup_key, const char *from, char *out,
				 size_t out_size)
{
	static const char hex[] = "0123456789ABCDEF";
	const char *at = from ? strrchr(from, '@') : NULL;
	if (!dedup_key || !*dedup_key || !at || !at[1])
		return DUN_E_INVALID;
	size_t cap =
	    out_size < DUN_SMTP_MESSAGE_ID_MAX + 1 ? out_size : DUN_SMTP_MESSAGE_ID_MAX + 1;
	size_t o = 0;
	const char *prefix = "dunning.";
	for (const char *p = prefix; *p; p++) {
		if (o + 1 >= cap)
			return DUN_E_TOO_BIG;
		out[o++] = *p;
	}
	for (const unsigned char *k = (const unsigned char *)dedup_key; *k; k++) {
		bool keep = (*k >= 'a' && *k <= 'z') || (*k >= 'A' && *k <= 'Z') ||
			    (*k >= '0' && *k <= '9') || *k == '-' || *k == '_' || *k == '/';
		size_t need = keep ? 1 : 3;
		if (o + need >= cap)
			return DUN_E_TOO_BIG;
		if (keep) {
			out[o++] = (char)*k;
		} else {
			out[o++] = '=';
			out[o++] = hex[*k >> 4];
			out[o++] = hex[*k & 15];
		}
	}
	for (const char *p = at; *p; p++) {
		if (o + 1 >= cap)
			return DUN_E_TOO_BIG;
		out[o++] = *p;
	}
	out[o] = '\0';
	return message_id_ok(out) ? DUN_OK : DUN_E_INVALID;
}

/* ---- building the message ---- */

/* RFC 5322 date-time in UTC, with English names whatever the locale. */
static void rfc5322_date(char *out, size_t out_size, int64_t t)
{
	static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
	static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
					     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
	time_t tt = (time_t)t;
	struct tm tm;
	memset(&tm, 0, sizeof tm);
	gmtime_r(&tt, &tm);
	snprintf(out, out_size, "%s, %02d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday % 7],
		 tm.tm_mday, months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
		 tm.tm_sec);
}

static void base64(struct dun_buf *b, const unsigned char *s, size_t n)
{
	static const char tab[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	for (size_t i = 0; i < n; i += 3) {
		unsigned v = (unsigned)s[i] << 16;
		if (i + 1 < n)
			v |= (unsigned)s[i + 1] << 8;
		if (i + 2 < n)
			v |= s[i + 2];
		char q[4] = {tab[(v >> 18) & 63], tab[(v >> 12) & 63],
			     i + 1 < n ? tab[(v >> 6) & 63] : '=', i + 2 < n ? tab[v & 63] : '='};
		dun_buf_add(b, q, 4);
	}
}

/*
 * The Subject header. ASCII subjects are folded at spaces to keep lines near
 * 78 characters. Others are RFC 2047 "B" encoded-words of at most 45 bytes of
 * text each (75 characters encoded), cut between UTF-8 characters as the RFC
 * requires, one per folded line; decoders drop the folding between adjacent
 * encoded-words.
 */
static void add_subject(struct dun_buf *b, const char *subject)
{
	size_t n = strlen(subject);
	bool ascii = true;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)subject[i] >= 0x80)
			ascii = false;
	dun_buf_str(b, "Subject:");
	if (ascii) {
		size_t col = 8, i = 0;
		while (i < n) {
			size_t j = i;
			while (j < n && subject[j] != ' ')
				j++;
			if (col > 8 && col + 1 + (j - i) > 78) {
				dun_buf_str(b, "\r\n");
				col = 0;
			}
			dun_buf_str(b, " ");
			dun_buf_add(b, subject + i, j - i);
			col += 1 + (j - i);
			i = j < n ? j + 1 : j;
		}
		dun_buf_str(b, "\r\n");
		return;
	}
	size_t i = 0;
	while (i < n) {
		size_t j = i + 45 < n ? i + 45 : n;
		while (j > i && j < n && ((unsigned char)subject[j] & 0xc0) == 0x80)
			j--;
		if (j == i)
			j = i + 1;
		dun_buf_str(b, i ? "\r\n =?UTF-8?B?" : " =?UTF-8?B?");
		base64(b, (const unsigned char *)subject + i, j - i);
		dun_buf_str(b, "?=");
		i = j;
	}
	dun_buf_str(b, "\r\n");
}

enum dun_err dun_smtp_build_message(const char *from, const char *to, const char *subject,
				    const char *body, const char *message_id, int64_t date_unix,
				    char **out, char *err, size_t err_size)
{
	*out = NULL;
	if (!address_ok(from)) {
		set_err(err, err_size, "from address '%s' is not a plain address",
			from ? from : "");
		return DUN_E_INVALID;
	}
	if (!address_ok(to)) {
		/* Not echoed: it may hold the very bytes that make it invalid. */
		set_err(err, err_size,
			"recipient address is not a plain address like a@example.com");
		return DUN_E_INVALID;
	}
	if (!message_id_ok(message_id)) {
		set_err(err, err_size, "Message-ID is not of the form left@right (dot-atoms)");
		return DUN_E_INVALID;
	}
	if (!subject || !*subject) {
		set_err(err, err_size, "empty subject");
		return DUN_E_INVALID;
	}
	for (const unsigned char *s = (const unsigned char *)subject; *s; s++) {
		if (*s < 0x20 || *s == 0x7f) {
			set_err(err, err_size,
				"subject contains a control character (CR, LF, ...)");
			return DUN_E_INVALID;
		}
	}
	if (!body)
		body = "";
	size_t body_len = strlen(body);
	if (body_len > DUN_SMTP_BODY_MAX) {
		set_err(err, err_size, "body is %zu bytes; the limit is %d", body_len,
			DUN_SMTP_BODY_MAX);
		return DUN_E_TOO_BIG;
	}

	struct dun_buf b = {0};
	char line[160];
	rfc5322_date(line, sizeof line, date_unix);
	dun_buf_str(&b, "Date: ");
	dun_buf_str(&b, line);
	dun_buf_str(&b, "\r\nFrom: ");
	dun_buf_str(&b, from);
	dun_buf_str(&b, "\r\nTo: ");
	dun_buf_str(&b, to);
	dun_buf_str(&b, "\r\n");
	add_subject(&b, subject);
	dun_buf_str(&b, "Message-ID: <");
	dun_buf_str(&b, message_id);
	dun_buf_str(&b, ">\r\n"
			"MIME-Version: 1.0\r\n"
			"Content-Type: text/plain; charset=UTF-8\r\n"
			"Content-Transfer-Encoding: 8bit\r\n"
			/* RFC 3834: keeps vacation responders from answering. */
			"Auto-Submitted: auto-generated\r\n"
			"\r\n");

	/* The body with every line end as CRLF; a stray CR is dropped. */
	size_t start = 0, lineno = 1;
	for (size_t i = 0; i <= body_len; i++) {
		if (i < body_len && body[i] != '\n')
			continue;
		size_t end = i;
		if (end > start && body[end - 1] == '\r')
			end--;
		size_t width = 0;
		for (size_t k = start; k < end; k++)
			if (body[k] != '\r')
				width++;
		if (width > DUN_SMTP_LINE_MAX) {
			set_err(err, err_size, "body line %zu is %zu bytes; SMTP allows %d", lineno,
				width, DUN_SMTP_LINE_MAX);
			free(b.p);
			return DUN_E_INVALID;
		}
		for (size_t k = start; k < end; k++)
			if (body[k] != '\r')
				dun_buf_add(&b, body + k, 1);
		if (i < body_len || end > start)
			dun_buf_str(&b, "\r\n");
		start = i + 1;
		lineno++;
	}
	*out = b.p;
	return DUN_OK;
}

/* ---- talking to the server ---- */

/* What the debug callback saw; never any argument of AUTH. */
struct trace {
	char verb[12];	 /* last command sent: "EHLO", "AUTH", "RCPT", ... */
	char reply[200]; /* last reply line from the server, sanitized */
	int reply_code;	 /* its three-digit code, 0 if none */
	bool auth_sent;
	bool quitting; /* QUIT or RSET sent: later replies say nothing of the failure */
};

static int on_debug(CURL *h, curl_infotype type, char *data, size_t size, void *userp)
{
	static const char *const verbs[] = {"EHLO", "HELO", "STARTTLS", "AUTH", "MAIL",
					    "RCPT", "DATA", "NOOP",	"RSET", "QUIT"};
	struct trace *tr = userp;
	(void)h;
	if (tr->quitting)
		return 0;
	if (type == CURLINFO_HEADER_OUT) {
		/*
		 * Only known verbs are kept. The lines of an AUTH LOGIN exchange
		 * are bare base64 credentials and match none of them.
		 */
		for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++) {
			size_t k = strlen(verbs[i]);
			if (size >= k && memcmp(data, verbs[i], k) == 0 &&
			    (size == k || data[k] == ' ' || data[k] == '\r')) {
				if (strcmp(verbs[i], "QUIT") == 0 ||
				    strcmp(verbs[i], "RSET") == 0) {
					tr->quitting = true;
					break;
				}
				/* Every verb fits: the longest, STARTTLS, is 8 bytes. */
				memcpy(tr->verb, verbs[i], k + 1);
				if (strcmp(verbs[i], "AUTH") == 0)
					tr->auth_sent = true;
				tr->reply[0] = '\0';
				tr->reply_code = 0;
				break;
			}
		}
	} else if (type == CURLINFO_HEADER_IN) {
		/* The last complete line of this chunk. */
		size_t end = size;
		while (end && (data[end - 1] == '\n' || data[end - 1] == '\r'))
			end--;
		size_t start = end;
		while (start && data[start - 1] != '\n')
			start--;
		size_t o = 0;
		for (size_t i = start; i < end && o + 1 < sizeof tr->reply; i++) {
			unsigned char c = (unsigned char)data[i];
			tr->reply[o++] = (c < 0x20 || c >= 0x7f) ? ' ' : (char)c;
		}
		tr->reply[o] = '\0';
		if (o >= 3 && tr->reply[0] >= '1' && tr->reply[0] <= '5' && tr->reply[1] >= '0' &&
		    tr->reply[1] <= '9' && tr->reply[2] >= '0' && tr->reply[2] <= '9')
			tr->reply_code = (tr->reply[0] - '0') * 100 + (tr->reply[1] - '0') * 10 +
					 (tr->reply[2] - '0');
		else
			tr->reply_code = 0;
	}
	return 0;
}

struct upload {
	const char *data;
	size_t len, pos;
};

static size_t on_read(char *dst, size_t size, size_t nitems, void *userp)
{
	struct upload *up = userp;
	size_t room = size * nitems, left = up->len - up->pos;
	size_t n = left < room ? left : room;
	memcpy(dst, up->data + up->pos, n);
	up->pos += n;
	return n;
}

static size_t on_write(char *ptr, size_t size, size_t nmemb, void *userp)
{
	(void)ptr;
	(void)userp;
	return size * nmemb;
}

/*
 * One enum dun_err for a failed exchange. The server's reply decides when
 * there is one (4xx: try later; 5xx: whose fault depends on the command it
 * answered); otherwise the CURLcode does. CURLcode gains values with every
 * curl release, so it is switched on as an int: the ones listed need an
 * operator, everything else is a delivery failure worth retrying.
 */
static enum dun_err map_failure(CURLcode rc, const struct trace *tr)
{
	if (rc == CURLE_OUT_OF_MEMORY)
		dun_oom();
	if (rc == CURLE_OPERATION_TIMEDOUT)
		return DUN_E_TIMEOUT;
	int code = tr->reply_code;
	if (code >= 400 && code < 500)
		return DUN_E_EMAIL;
	if (code >= 500 && code < 600) {
		if (code == 530 || code == 534 || code == 535 || code == 538 ||
		    strcmp(tr->verb, "AUTH") == 0)
			return DUN_E_CONFIG;
		if (strcmp(tr->verb, "RCPT") == 0 || strcmp(tr->verb, "DATA") == 0)
			return DUN_E_INVALID;
		return DUN_E_CONFIG;
	}
	switch ((int)rc) {
	case CURLE_LOGIN_DENIED:
	case CURLE_USE_SSL_FAILED:
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CIPHER:
	case CURLE_SSL_ENGINE_NOTFOUND:
	case CURLE_URL_MALFORMAT:
	case CURLE_UNSUPPORTED_PROTOCOL:
	case CURLE_NOT_BUILT_IN:
	case CURLE_BAD_FUNCTION_ARGUMENT:
		return DUN_E_CONFIG;
	}
	return DUN_E_EMAIL;
}

static void describe_failure(char *err, size_t err_size, const char *what,
			     const struct dun_smtp_config *cfg, CURLcode rc, const char *curl_msg,
			     const struct trace *tr)
{
	const char *reason = curl_msg[0] ? curl_msg : curl_easy_strerror(rc);
	if (tr->reply_code >= 400)
		set_err(err, err_size, "%s via %s failed: %s; server replied to %s: %s", what,
			cfg->url, reason, tr->verb[0] ? tr->verb : "the connection", tr->reply);
	else
		set_err(err, err_size, "%s via %s failed: %s", what, cfg->url, reason);
}

/* An easy handle with everything send and check have in common. */
static CURL *open_handle(const struct dun_smtp_config *cfg, struct trace *tr, char *curl_msg)
{
	CURL *h = curl_easy_init();
	if (!h)
		dun_oom();
	curl_easy_setopt(h, CURLOPT_URL, cfg->url);
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "smtp,smtps");
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, cfg->timeout_ms);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, cfg->timeout_ms);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, curl_msg);
	curl_easy_setopt(h, CURLOPT_USE_SSL,
			 cfg->tls == DUN_SMTP_TLS_NONE ? (long)CURLUSESSL_NONE
						       : (long)CURLUSESSL_ALL);
	if (is_set(cfg->ca_file))
		curl_easy_setopt(h, CURLOPT_CAINFO, cfg->ca_file);
	if (is_set(cfg->username)) {
		curl_easy_setopt(h, CURLOPT_USERNAME, cfg->username);
		curl_easy_setopt(h, CURLOPT_PASSWORD, cfg->password);
	}
	/* VERBOSE only routes the protocol lines to on_debug; nothing is printed. */
	curl_easy_setopt(h, CURLOPT_DEBUGFUNCTION, on_debug);
	curl_easy_setopt(h, CURLOPT_DEBUGDATA, tr);
	curl_easy_setopt(h, CURLOPT_VERBOSE, 1L);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_write);
	return h;
}

enum dun_err dun_smtp_send(const struct dun_smtp_config *cfg, const char *to, const char *subject,
			   const char *body, const char *message_id, char *err, size_t err_size)
{
	enum dun_err e = dun_smtp_config_validate(cfg, err, err_size);
	if (e != DUN_OK)
		return e;
	/* "<id>" is accepted too: callers that store the header form pass it. */
	char bare_id[DUN_SMTP_MESSAGE_ID_MAX + 1];
	size_t id_len = message_id ? strlen(message_id) : 0;
	if (id_len >= 2 && message_id[0] == '<' && message_id[id_len - 1] == '>' &&
	    id_len - 2 < sizeof bare_id) {
		memcpy(bare_id, message_id + 1, id_len - 2);
		bare_id[id_len - 2] = '\0';
		message_id = bare_id;
	}
	char *msg = NULL;
	e = dun_smtp_build_message(cfg->from, to, subject, body, message_id, dun_clock_now(), &msg,
				   err, err_size);
	if (e != DUN_OK)
		return e;

	char from_path[DUN_SMTP_ADDRESS_MAX + 3], to_path[DUN_SMTP_ADDRESS_MAX + 3];
	snprintf(from_path, sizeof from_path, "<%s>", cfg->from);
	snprintf(to_path, sizeof to_path, "<%s>", to);
	struct curl_slist *rcpt = curl_slist_append(NULL, to_path);
	if (!rcpt)
		dun_oom();
	struct trace tr = {0};
	char curl_msg[CURL_ERROR_SIZE] = "";
	struct upload up = {msg, strlen(msg), 0};
	CURL *h = open_handle(cfg, &tr, curl_msg);
	curl_easy_setopt(h, CURLOPT_MAIL_FROM, from_path);
	curl_easy_setopt(h, CURLOPT_MAIL_RCPT, rcpt);
	/*
	 * curl dot-stuffs the upload (a line starting with '.' is sent as
	 * "..") and ends it with CRLF.CRLF; the message is passed unescaped.
	 */
	curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
	curl_easy_setopt(h, CURLOPT_READFUNCTION, on_read);
	curl_easy_setopt(h, CURLOPT_READDATA, &up);
	curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, (curl_off_t)up.len);

	CURLcode rc = curl_easy_perform(h);
	if (rc != CURLE_OK) {
		e = map_failure(rc, &tr);
		char what[DUN_SMTP_ADDRESS_MAX + 32];
		snprintf(what, sizeof what, "sending to %s", to);
		describe_failure(err, err_size, what, cfg, rc, curl_msg, &tr);
	}
	curl_easy_cleanup(h);
	curl_slist_free_all(rcpt);
	free(msg);
	return e;
}

enum dun_err dun_smtp_check(const struct dun_smtp_config *cfg, char *err, size_t err_size)
{
	enum dun_err e = dun_smtp_config_validate(cfg, err, err_size);
	if (e != DUN_OK)
		return e;
	struct trace tr = {0};
	char curl_msg[CURL_ERROR_SIZE] = "";
	CURL *h = open_handle(cfg, &tr, curl_msg);
	/* EHLO, STARTTLS and AUTH as configured, then NOOP, then QUIT. */
	curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, "NOOP");
	curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
	CURLcode rc = curl_easy_perform(h);
	if (rc != CURLE_OK) {
		e = map_failure(rc, &tr);
		describe_failure(err, err_size, "SMTP check", cfg, rc, curl_msg, &tr);
	} else if (is_set(cfg->username) && !tr.auth_sent) {
		set_err(err, err_size,
			"SMTP check via %s: smtp_username is set but the server offered no AUTH "
			"mechanism%s",
			cfg->url,
			cfg->tls == DUN_SMTP_TLS_NONE ? " (many servers offer AUTH only after TLS)"
						      : "");
		e = DUN_E_CONFIG;
	}
	curl_easy_cleanup(h);
	return e;
}
