/* lb_maps.c: the maps alone, no programs. The CLI compiles this to open the pinned maps with the
 * same layouts the programs use (service list, sync --dry-run, cleanup). */
#include "lb_maps.h"
