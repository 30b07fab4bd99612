/*
 * cpu_sample.h — the CPU kernels of the sample op (docs/SAMPLING.md is the
 * specification both follow, bit for bit): a plain reference that sorts,
 * and a fast one (threshold search, SIMD, rows across the thread pool).
 */
#ifndef DUET_CPU_SAMPLE_H
#define DUET_CPU_SAMPLE_H

#include <stdint.h>

#include "device.h"
#include "threadpool.h"

typedef struct cpu_sample {
    const float *logits;            /* [n_rows][vocab] raw */
    const duet_sample_row *rows;    /* [n_rows] */
    const duet_sample_edit *edits;  /* [n_edits], may be NULL when 0 */
    float *work;                    /* [n_rows][vocab] scratch */
    duet_sample_result *results;    /* [n_rows] */
    int n_rows, vocab, n_edits;
} cpu_sample;

void duet_cpu_sample_ref(const cpu_sample *a);
/* pool may be NULL (one thread). */
void duet_cpu_sample_fast(duet_threadpool *pool, const cpu_sample *a);

#endif
