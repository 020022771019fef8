/* Counts OpenMP parallel regions (libgomp's GOMP_parallel) that start a team of more than one thread outside any
 * other region: the barriers a busy machine makes expensive (docs/algorithms.md §18.9). Preloaded into the timing
 * workers by `benchmarks/timing.py --count-regions`; `timing_proto.measure` reads omp_regions_multi() per call.
 *   gcc -O2 -shared -fPIC -o libompregions.so omp_regions.c -ldl */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdatomic.h>

typedef void (*parallel_fn)(void (*)(void *), void *, unsigned, unsigned);
typedef int (*int_fn)(void);
static atomic_long multi = 0;

void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags) {
    static parallel_fn real = 0;
    static int_fn in_parallel = 0, max_threads = 0;
    if (!real) {
        real = (parallel_fn)dlvsym(RTLD_NEXT, "GOMP_parallel", "GOMP_4.0");
        in_parallel = (int_fn)dlsym(RTLD_NEXT, "omp_in_parallel");
        max_threads = (int_fn)dlsym(RTLD_NEXT, "omp_get_max_threads");
    }
    unsigned team = num_threads ? num_threads : (max_threads ? (unsigned)max_threads() : 2);
    if (team > 1 && !(in_parallel && in_parallel())) atomic_fetch_add(&multi, 1);
    real(fn, data, num_threads, flags);
}

long omp_regions_multi(void) { return atomic_load(&multi); }
