// One instruction set's side of the link test: compiled once with -mavx2 and
// ISM_SIMD=avx2, once with AVX-512 flags, ISM_ISA_LINK_ENTRY naming its entry
// point. Both objects define every inline function of ism they use; only the
// per-instruction-set namespaces keep the linker from handing one path the
// other's copy.
#include <vector>

#include "cpu/isa_link/isa_link.hpp"
#include "ism/ism.hpp"

extern "C" const char* ISM_ISA_LINK_ENTRY(const isa_link::Problem* p, isa_link::Outputs* o) {
  using ism::index_t;
  const index_t n = p->tokens, h = p->heads, kvh = p->kv_heads, d = p->dim;
  const std::vector<index_t> b(p->boundaries, p->boundaries + p->segments + 1);
  const auto mask = ism::ism_mask(b);
  auto view = [&](auto* data, index_t heads) {
    return ism::HeadsView<std::remove_pointer_t<decltype(data)>>{data, n, heads, d, heads * d, d};
  };
  ism::AttentionOptions opt;
  opt.threads = 2;

  // fp32, with the LSE.
  opt.lse = o->lse;
  ism::attention<float>(view(p->q, h), view(p->k, kvh), view(p->v, kvh), view(o->out_f32, h), mask, opt);
  opt.lse = nullptr;

  // bf16 throughout.
  std::vector<Eigen::bfloat16> qb(size_t(n * h * d)), kb(size_t(n * kvh * d)), vb(kb.size()), ob(qb.size());
  for (size_t i = 0; i < qb.size(); ++i) qb[i] = ism::from_float<Eigen::bfloat16>(p->q[i]);
  for (size_t i = 0; i < kb.size(); ++i) {
    kb[i] = ism::from_float<Eigen::bfloat16>(p->k[i]);
    vb[i] = ism::from_float<Eigen::bfloat16>(p->v[i]);
  }
  ism::attention<Eigen::bfloat16>(view(static_cast<const Eigen::bfloat16*>(qb.data()), h),
                                  view(static_cast<const Eigen::bfloat16*>(kb.data()), kvh),
                                  view(static_cast<const Eigen::bfloat16*>(vb.data()), kvh), view(ob.data(), h), mask,
                                  opt);
  for (size_t i = 0; i < ob.size(); ++i) o->out_bf16[i] = ism::to_float(ob[i]);

  // fp32 Q and output over an fp16 cache (mixed element types).
  std::vector<Eigen::half> kh(kb.size()), vh(kb.size());
  for (size_t i = 0; i < kh.size(); ++i) {
    kh[i] = ism::from_float<Eigen::half>(p->k[i]);
    vh[i] = ism::from_float<Eigen::half>(p->v[i]);
  }
  ism::attention(view(p->q, h), view(static_cast<const Eigen::half*>(kh.data()), kvh),
                 view(static_cast<const Eigen::half*>(vh.data()), kvh), view(o->out_mixed, h), mask, opt);

  // The batched and planned entry points (their containers, their checks):
  // the same fp32 problem, whose output must equal the single call's.
  std::vector<float> batched(size_t(n * h * d)), planned(batched.size());
  std::vector<ism::AttentionRequest<float, ism::SegmentMask>> requests;
  requests.push_back({view(p->q, h), view(p->k, kvh), view(p->v, kvh), view(batched.data(), h), &mask, -1, nullptr});
  ism::attention_batch(requests, opt);
  std::vector<ism::PlanRequest> planned_requests;
  planned_requests.push_back(ism::plan_request(ism::RequestShape{n, n, h, kvh, d, -1}, mask));
  ism::AttentionPlan plan(std::move(planned_requests));
  std::vector<ism::RequestBuffers<float, ism::ContiguousKV<float>>> buffers;
  buffers.push_back({view(p->q, h), ism::ContiguousKV<float>{view(p->k, kvh), view(p->v, kvh)},
                     view(planned.data(), h), nullptr});
  plan.run(buffers, opt);
  o->entry_points_agree = batched == std::vector<float>(o->out_f32, o->out_f32 + batched.size()) && planned == batched;

  // The backward pass, from the fp32 forward's output and LSE.
  ism::attention_backward<float>(view(p->q, h), view(p->k, kvh), view(p->v, kvh),
                                 view(static_cast<const float*>(o->out_f32), h), view(p->dout, h), o->lse,
                                 view(o->dq, h), view(o->dk, kvh), view(o->dv, kvh), mask, opt);
  return ISM_SIMD_NAME;
}
