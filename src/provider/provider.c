/*
 * provider.c — the parts of the provider seam shared by every
 * implementation (see provider.h).
 */
#include "provider.h"

void dun_provider_destroy(struct dun_provider *p)
{
	if (p && p->ops && p->ops->destroy)
		p->ops->destroy(p->self);
}
