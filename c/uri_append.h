/* uri_append.h: a helper shared by the C drivers in this directory (not part of the public API
** in spoolvfs.h). Builds `file:` URIs from paths that may hold characters a URI cannot carry
** literally. */
#ifndef SPOOLVFS_URI_APPEND_H
#define SPOOLVFS_URI_APPEND_H

#include <stdio.h>
#include <string.h>

/* Append s to the NUL-terminated buf (capacity cap), percent-encoding what a URI path or value
** may not hold literally. Stops early rather than overflow. */
static void uri_append(char *buf, size_t cap, const char *s) {
  size_t n = strlen(buf);
  for (; *s && n + 4 < cap; s++) {
    unsigned char c = (unsigned char)*s;
    if (c <= ' ' || c >= 0x7f || strchr("%?#&=", c))
      n += (size_t)snprintf(buf + n, cap - n, "%%%02X", c);
    else
      buf[n++] = (char)c;
  }
  buf[n] = 0;
}

#endif
