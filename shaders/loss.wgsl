// Softmax cross-entropy on logits z (rows × classes) against integer labels, forward and
// backward fused, plus the count of correct predictions:
//
//   loss_r = log Σ_j exp(z_rj − max_r) + max_r − z_r,label     (log-sum-exp, shifted by the max)
//   dz_rj  = grad_scale·(softmax(z_r)_j − [j = label_r])        (grad_scale = 1/rows: mean loss,
//                                                                or 1/the global batch's rows on a
//                                                                data-parallel rank's slice)
//   correct_r = [argmax_j z_rj = label_r]                       (first maximum wins, as torch)
//
//   argmax_r = the first j with the largest z_rj                (as the correct count takes it)
//
// One workgroup walks all rows and adds the batch's loss sum and correct count to `metrics`,
// which accumulates on the device over many steps: [loss sum, its Kahan compensation, correct,
// samples, calls, first non-finite call, first bad-label call, its row, its label, classes].
// The first non-finite call is the 1-based call whose batch loss was first not finite (0 while
// none was), so a diverging run is caught on the device and named exactly however rarely the
// host reads. A label that is not a class index is noted the same way (its row adds nothing
// and gets a zero gradient); the host's read of the totals turns it into an error. A single
// workgroup means no two threads ever add to `metrics` at once.

const METRIC_LOSS: u32 = 0u;
const METRIC_LOSS_COMPENSATION: u32 = 1u;
const METRIC_CORRECT: u32 = 2u;
const METRIC_SAMPLES: u32 = 3u;
const METRIC_CALLS: u32 = 4u;
const METRIC_FIRST_NON_FINITE: u32 = 5u;
const METRIC_BAD_LABEL_CALL: u32 = 6u;
const METRIC_BAD_LABEL_ROW: u32 = 7u;
const METRIC_BAD_LABEL: u32 = 8u;
const METRIC_BAD_LABEL_CLASSES: u32 = 9u;
const NO_ROW: u32 = 0xffffffffu;

// `argmax` reads rows and classes only.
struct LossParams {
    rows: u32,
    classes: u32,
    grad_scale: f32,
    // 1: write dz into `out` (training); 0: evaluation only.
    write_grad: u32,
}

@group(0) @binding(0) var<uniform> p: LossParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(15) var<storage, read> labels: array<f32>;
@group(0) @binding(9) var<storage, read_write> out: array<f32>;
@group(0) @binding(16) var<storage, read_write> metrics: array<f32>;

var<workgroup> loss_part: array<f32, WORKGROUP>;
var<workgroup> correct_part: array<f32, WORKGROUP>;
var<workgroup> first_bad_row: atomic<u32>;

// An integer in 0..classes; NaN fails every comparison.
fn is_class_index(label: f32) -> bool {
    return label >= 0.0 && label < f32(p.classes) && fract(label) == 0.0;
}

// The class of the row starting at `base` with the largest logit: a tie goes to the first, and
// a NaN never wins a comparison.
fn first_max(base: u32) -> u32 {
    var top = x[base];
    var best = 0u;
    for (var j = 1u; j < p.classes; j++) {
        if x[base + j] > top {
            top = x[base + j];
            best = j;
        }
    }
    return best;
}

@compute @workgroup_size(WORKGROUP)
fn softmax_cross_entropy(@builtin(local_invocation_index) t: u32) {
    if t == 0u {
        atomicStore(&first_bad_row, NO_ROW);
    }
    workgroupBarrier();
    var loss = 0.0;
    var correct = 0.0;
    for (var r = t; r < p.rows; r += WORKGROUP) {
        let base = r * p.classes;
        if !is_class_index(labels[r]) {
            atomicMin(&first_bad_row, r);
            if p.write_grad == 1u {
                for (var j = 0u; j < p.classes; j++) {
                    out[base + j] = 0.0;
                }
            }
            continue;
        }
        let label = u32(labels[r]);
        let best = first_max(base);
        let top = x[base + best];
        var total = 0.0;
        for (var j = 0u; j < p.classes; j++) {
            total += exp(x[base + j] - top);
        }
        loss += log(total) + top - x[base + label];
        correct += select(0.0, 1.0, best == label);
        if p.write_grad == 1u {
            for (var j = 0u; j < p.classes; j++) {
                let onehot = select(0.0, 1.0, j == label);
                out[base + j] = (exp(x[base + j] - top) / total - onehot) * p.grad_scale;
            }
        }
    }
    loss_part[t] = loss;
    correct_part[t] = correct;
    for (var stride = WORKGROUP / 2u; stride > 0u; stride /= 2u) {
        workgroupBarrier();
        if t < stride {
            loss_part[t] += loss_part[t + stride];
            correct_part[t] += correct_part[t + stride];
        }
    }
    if t == 0u {
        // Kahan summation: the epoch's loss is a sum of thousands of batch sums.
        let term = loss_part[0] - metrics[METRIC_LOSS_COMPENSATION];
        let sum = metrics[METRIC_LOSS] + term;
        metrics[METRIC_LOSS_COMPENSATION] = (sum - metrics[METRIC_LOSS]) - term;
        metrics[METRIC_LOSS] = sum;
        metrics[METRIC_CORRECT] += correct_part[0];
        metrics[METRIC_SAMPLES] += f32(p.rows);
        metrics[METRIC_CALLS] += 1.0;
        // A non-finite value fails every comparison, so this is true for NaN and ±inf.
        let finite = abs(loss_part[0]) <= 3.4028235e38;
        if !finite && metrics[METRIC_FIRST_NON_FINITE] == 0.0 {
            metrics[METRIC_FIRST_NON_FINITE] = metrics[METRIC_CALLS];
        }
        let bad_row = atomicLoad(&first_bad_row);
        if bad_row != NO_ROW && metrics[METRIC_BAD_LABEL_CALL] == 0.0 {
            metrics[METRIC_BAD_LABEL_CALL] = metrics[METRIC_CALLS];
            metrics[METRIC_BAD_LABEL_ROW] = f32(bad_row);
            metrics[METRIC_BAD_LABEL] = labels[bad_row];
            metrics[METRIC_BAD_LABEL_CLASSES] = f32(p.classes);
        }
    }
}

// The predicted class of each row, stored as f32 like the labels: one thread per row, by the
// `first_max` that `softmax_cross_entropy` scores with.
@compute @workgroup_size(WORKGROUP)
fn argmax(@builtin(global_invocation_id) id: vec3<u32>,
          @builtin(num_workgroups) groups: vec3<u32>) {
    let r = thread_index(id, groups, WORKGROUP);
    if r >= p.rows {
        return;
    }
    out[r] = f32(first_max(r * p.classes));
}
